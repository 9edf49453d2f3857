"""TorchServe workflow archives (``.war``): a zip with ``WAR-INF/MANIFEST.json``, the workflow's
specification (YAML: ``models`` and ``dag``) and a handler file of functions. This module reads
and checks them; ``core.torchserve_workflows`` registers their models and runs their DAG."""

from __future__ import annotations

import ast
import json
import reprlib
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from inferd.errors import InvalidInput
from inferd.repository.archives import MAX_MANIFEST_BYTES

MAX_WAR_ENTRIES = 10_000  # a .war holds a spec, a handler and a few extra files
MAX_WAR_UNPACKED_BYTES = 1024**3  # what its entries say they inflate to, checked before anything is written

# TorchServe's WorkFlow defaults, each overridable globally under ``models:`` and per model
DEFAULTS = {"min-workers": 1, "max-workers": 1, "batch-size": 1, "max-batch-delay": 50, "retry-attempts": 1,
            "timeout-ms": 10000}


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What a node's registration and calls use (TorchServe's WorkflowModel)."""

    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: int
    retry_attempts: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """A parsed specification: the global settings, each model node's ``url`` and settings, the
    DAG (node -> next nodes, in the file's order) and its text as TorchServe describes it."""

    settings: NodeSettings
    models: dict[str, tuple[str, NodeSettings]]
    dag: dict[str, tuple[str, ...]]
    dag_text: str

    @property
    def nodes(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for node, after in self.dag.items():
            seen[node] = None
            seen.update(dict.fromkeys(after))
        return tuple(seen)

    @property
    def functions(self) -> tuple[str, ...]:
        """The DAG's nodes that are no model: functions of the workflow's handler file."""
        return tuple(node for node in self.nodes if node not in self.models)

    def predecessors(self, node: str) -> tuple[str, ...]:
        return tuple(source for source, after in self.dag.items() if node in after)


@dataclass(frozen=True, slots=True)
class WorkflowArchive:
    name: str
    folder: Path  # the unpacked archive (private; removed by ``remove``)
    handler: Path
    spec: WorkflowSpec

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_workflow_archive(archive: Path, name: str | None = None) -> WorkflowArchive:
    """Unpack ``archive`` into a private folder and read its manifest, specification and handler.
    Anything wrong is a 400 naming the file and the key."""
    folder = Path(tempfile.mkdtemp(prefix="inferd-war-"))
    try:
        manifest = _unpack(archive, folder)
        workflow = manifest.get("workflow")
        if not isinstance(workflow, dict):
            raise InvalidInput(f"{archive.name}: WAR-INF/MANIFEST.json has no 'workflow' object")
        for key in ("workflowName", "specFile", "handler"):
            if not isinstance(workflow.get(key), str) or not workflow[key]:
                raise InvalidInput(f"{archive.name}: WAR-INF/MANIFEST.json's workflow.{key} is missing")
        chosen = name or workflow["workflowName"]
        spec_text = _member(folder, workflow["specFile"], archive.name).read_text()
        spec = parse_spec(spec_text, f"{archive.name}: {workflow['specFile']}")
        handler = _member(folder, workflow["handler"], archive.name)
        missing = [f for f in spec.functions if f not in top_level_functions(handler)]
        if missing:
            raise InvalidInput(f"{archive.name}: dag nodes {missing} are neither models under 'models' nor "
                               f"functions of the handler {handler.name}")
        return WorkflowArchive(chosen, folder, handler, spec)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _unpack(archive: Path, folder: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(archive) as bundle:
            _check_size(bundle, archive.name)
            for member in bundle.namelist():
                parts = PurePosixPath(member.replace("\\", "/")).parts
                if member.startswith("/") or ".." in parts:
                    raise InvalidInput(f"{archive.name}: entry {member!r} would leave the archive's folder")
            bundle.extractall(folder)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"{archive.name} is not a workflow archive (a zip): {exc}") from None
    manifest_path = folder / "WAR-INF" / "MANIFEST.json"
    if not manifest_path.is_file():
        raise InvalidInput(f"{archive.name} has no WAR-INF/MANIFEST.json")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"{archive.name}: WAR-INF/MANIFEST.json is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise InvalidInput(f"{archive.name}: WAR-INF/MANIFEST.json is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise InvalidInput(f"{archive.name}: WAR-INF/MANIFEST.json must be a JSON object")
    return manifest


def _check_size(bundle: zipfile.ZipFile, name: str) -> None:
    """A zip bomb is refused by what its entries declare (zipfile never inflates past that)."""
    members = bundle.infolist()
    if len(members) > MAX_WAR_ENTRIES:
        raise InvalidInput(f"{name} has {len(members)} entries, over the limit of {MAX_WAR_ENTRIES}")
    total = sum(member.file_size for member in members)
    if total > MAX_WAR_UNPACKED_BYTES:
        raise InvalidInput(f"{name} unpacks to {total} bytes, over the limit of {MAX_WAR_UNPACKED_BYTES}")


def _member(folder: Path, name: str, where: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise InvalidInput(f"{where}: the manifest names {name!r}, which is not a file in the archive")
    return path


def top_level_functions(handler: Path) -> set[str]:
    """The functions a handler file defines, read without running it."""
    try:
        tree = ast.parse(handler.read_text(), str(handler.name))
    except SyntaxError as exc:
        raise InvalidInput(f"workflow handler {handler.name} does not parse: {exc}") from None
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def parse_spec(text: str, where: str) -> WorkflowSpec:
    """The specification's ``models`` (global settings, then per model ``url`` and overrides) and
    ``dag`` (node -> list of next nodes), checked as TorchServe's WorkFlow and Dag check them:
    one start node, no cycle."""
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where} does not parse as YAML: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{where}: its YAML nests too deeply to read") from None
    if not isinstance(loaded, dict):
        raise InvalidInput(f"{where}: expected a mapping with 'models' and 'dag', got {type(loaded).__name__}")
    models_section, dag_section = loaded.get("models"), loaded.get("dag")
    if not isinstance(models_section, dict):
        raise InvalidInput(f"{where}: 'models' must be a mapping of settings and models, got {_shown(models_section)}")
    if not isinstance(dag_section, dict) or not dag_section:
        raise InvalidInput(f"{where}: 'dag' must be a mapping of node -> [next nodes], got {_shown(dag_section)}")
    settings = _settings({k: v for k, v in models_section.items() if k in DEFAULTS}, DEFAULTS, f"{where}: models")
    models: dict[str, tuple[str, NodeSettings]] = {}
    for key, value in models_section.items():
        if key in DEFAULTS:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not value["url"]:
            raise InvalidInput(f"{where}: models.{key} must be a mapping with a 'url' (a .mar), got {_shown(value)}")
        overrides = {k: v for k, v in value.items() if k != "url"}
        models[str(key)] = (value["url"], _settings(overrides, _as_dict(settings), f"{where}: models.{key}"))
    dag: dict[str, tuple[str, ...]] = {}
    for node, after in dag_section.items():
        if not isinstance(after, list) or not all(isinstance(n, str) for n in after if n is not None):
            raise InvalidInput(f"{where}: dag.{node} must be a list of node names, got {_shown(after)}")
        targets = tuple(n.strip() for n in after if n is not None and n.strip())
        if str(node) in targets:
            raise InvalidInput(f"{where}: dag.{node} leads to itself (a loop)")
        dag[str(node)] = targets
    spec = WorkflowSpec(settings, models, dag, _java_map(dag_section))
    _check_graph(spec, where)
    return spec


_SHOWN = reprlib.Repr()  # (keyword limits need Python 3.12)
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 80, 80


def _shown(value: Any) -> str:
    """A value as an error message shows it, bounded: YAML aliases can make a 1 KB spec a
    structure whose full repr is gigabytes (a "billion laughs")."""
    return _SHOWN.repr(value)


def _settings(values: dict[Any, Any], defaults: dict[str, int], where: str) -> NodeSettings:
    chosen = dict(defaults)
    for key, value in values.items():
        if key not in DEFAULTS:
            raise InvalidInput(f"{where}: unknown setting {key!r} (one of url, {', '.join(DEFAULTS)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{where}.{key} must be a whole number >= 0, got {_shown(value)}")
        chosen[key] = value
    if chosen["max-workers"] < chosen["min-workers"]:
        raise InvalidInput(f"{where}: max-workers {chosen['max-workers']} is below min-workers {chosen['min-workers']}")
    return NodeSettings(chosen["min-workers"], chosen["max-workers"], max(chosen["batch-size"], 1),
                        chosen["max-batch-delay"], chosen["retry-attempts"], chosen["timeout-ms"])


def _as_dict(settings: NodeSettings) -> dict[str, int]:
    return {"min-workers": settings.min_workers, "max-workers": settings.max_workers,
            "batch-size": settings.batch_size, "max-batch-delay": settings.max_batch_delay_ms,
            "retry-attempts": settings.retry_attempts, "timeout-ms": settings.timeout_ms}


def _check_graph(spec: WorkflowSpec, where: str) -> None:
    nodes = spec.nodes
    starts = [node for node in nodes if not spec.predecessors(node)]
    if len(starts) != 1:
        raise InvalidInput(f"{where}: dag should have only one start node, found {starts or 'none (a loop)'}")
    remaining = {node: len(spec.predecessors(node)) for node in nodes}
    ready, ordered = list(starts), 0
    while ready:
        node = ready.pop()
        ordered += 1
        for nxt in spec.dag.get(node, ()):
            remaining[nxt] -= 1
            if remaining[nxt] == 0:
                ready.append(nxt)
    if ordered != len(nodes):
        raise InvalidInput(f"{where}: dag is not a valid DAG: it has a loop")


def _java_map(value: Any) -> str:
    """A value as Java's ``toString`` writes it (``{pre=[m1, m2], m1=[post]}``): describe's workflowDag."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_map(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_java_map(v) for v in value) + "]"
    return "null" if value is None else str(value)


def function_archive(archive: WorkflowArchive, model_name: str, function: str) -> Path:
    """A model archive serving one function of the workflow's handler (TorchServe registers each
    function node as a model whose handler is ``file.py:function``)."""
    target = archive.folder / "functions" / f"{model_name}.mar"
    target.parent.mkdir(exist_ok=True)
    manifest = {"runtime": "python", "model": {"modelName": model_name, "modelVersion": "1.0",
                                               "handler": f"{archive.handler.name}:{function}"}}
    with zipfile.ZipFile(target, "w") as bundle:
        bundle.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        bundle.write(archive.handler, archive.handler.name)
    return target
