"""TorchServe's workflows: a ``.war`` from the workflow store is registered as models (each model
node ``<workflow>__<node>`` from its ``.mar``, each function node ``<workflow>__<function>`` as a
model whose handler is that function), and its DAG runs per request as TorchServe's DagExecutor
runs it: every node gets bytes, a node with one predecessor as ``body``, a node with several as one
field per predecessor (named by it), and answers bytes; nodes whose predecessors are done run at
once, a node that fails is retried ``retry-attempts`` times, each attempt bounded by ``timeout-ms``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from inferd.config import TorchServeSettings
from inferd.core.torchserve import RegisterRequest, TorchServeModels
from inferd.errors import AlreadyExists, InferdError, InvalidInput, NotFound
from inferd.repository.archives import download, locate_archive, remove_downloaded
from inferd.repository.layout import is_valid_name
from inferd.repository.workflow_archives import NodeSettings, WorkflowArchive, function_archive, read_workflow_archive

log = logging.getLogger("inferd.torchserve")


@dataclass(frozen=True, slots=True)
class Original:
    """The workflow's request, given to its start node as it came."""

    body: bytes
    content_type: str
    headers: dict[str, str]


NodeInput = Original | dict[str, bytes]  # the start node's request, or {"body" | predecessor: bytes}
NodeCall = Callable[[str, NodeInput], Awaitable[bytes]]  # (model name, input) -> the node's answer


class WorkflowFailed(InferdError):
    """A node failed every attempt; the message is TorchServe's (``Error executing <node>``)."""


@dataclass(slots=True)
class Workflow:
    name: str
    url: str
    archive: WorkflowArchive
    downloaded: Path | None  # the .war this registration downloaded into the store

    def model_name(self, node: str) -> str:
        return f"{self.name}__{node}"

    def node_settings(self, node: str) -> NodeSettings:
        spec = self.archive.spec
        if node in spec.models:
            return spec.models[node][1]
        # TorchServe's function nodes: one worker, no batching, the global retries and timeout
        return NodeSettings(1, 1, 1, 0, spec.settings.retry_attempts, spec.settings.timeout_ms)


class TorchServeWorkflows:
    """The registered workflows (TorchServe's WorkflowManager)."""

    def __init__(self, models: TorchServeModels, workflow_store: Path | None,
                 settings: TorchServeSettings | None = None) -> None:
        self._models = models
        self._store = workflow_store
        self._allowed_urls = (settings or TorchServeSettings()).allowed_urls
        self._workflows: dict[str, Workflow] = {}
        self._registering: set[str] = set()  # names whose models are being registered now
        self._downloading: set[Path] = set()  # .war files a registration is downloading into the store now

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def get(self, name: str) -> Workflow:
        workflow = self._workflows.get(name)
        if workflow is None:
            raise NotFound(f"Workflow not found: {name}")
        return workflow

    async def register(self, url: str | None, name: str | None) -> str:
        """``POST /workflows``: the archive (downloaded into the store if a URL), its models
        (all or none), then the workflow."""
        if url is None:
            raise InvalidInput("Parameter url is required.")
        located = locate_archive(self._store, url, self._allowed_urls, kind="workflow")
        if not located.remote:
            return await self._register(url, name, located.path, downloaded=False)
        if located.path in self._downloading:  # another registration is downloading this file now
            raise InferdError(f"Workflow file already exists {located.path.name}")
        self._downloading.add(located.path)
        try:
            await asyncio.to_thread(download, located.remote, located.path)
            return await self._register(url, name, located.path, downloaded=True)
        finally:
            self._downloading.discard(located.path)

    async def _register(self, url: str, name: str | None, war: Path, downloaded: bool) -> str:
        try:
            archive = await asyncio.to_thread(read_workflow_archive, war, name)
        except BaseException:
            if downloaded:
                remove_downloaded(war)
            raise
        workflow = Workflow(archive.name, url, archive, war if downloaded else None)
        try:
            if not is_valid_name(archive.name):
                raise InvalidInput(f"workflow name {archive.name!r} is not valid: letters, digits, '_', '-', '.'")
            if archive.name in self._workflows or archive.name in self._registering:
                raise AlreadyExists(f"Workflow {archive.name} is already registered.")
            self._registering.add(archive.name)
            try:
                await self._register_nodes(workflow)
            finally:
                self._registering.discard(archive.name)
        except BaseException:
            self._drop_files(workflow)
            raise
        self._workflows[archive.name] = workflow
        return f"Workflow {archive.name} has been registered and scaled successfully."

    async def _register_nodes(self, workflow: Workflow) -> None:
        nodes = workflow.archive.spec.nodes
        results = await asyncio.gather(*(self._register_node(workflow, node) for node in nodes),
                                       return_exceptions=True)
        failures = [f"Workflow Node {workflow.model_name(node)} failed to register. Details: {_message(result)}"
                    for node, result in zip(nodes, results, strict=True) if isinstance(result, BaseException)]
        if not failures:
            return
        registered = [node for node, result in zip(nodes, results, strict=True)
                      if not isinstance(result, BaseException)]
        await self._unregister_nodes(workflow, registered)
        raise InferdError(f"Workflow {workflow.name} has failed to register. Failures: [{', '.join(failures)}]")

    async def _register_node(self, workflow: Workflow, node: str) -> None:
        settings = workflow.node_settings(node)
        request = RegisterRequest(url=None, model_name=workflow.model_name(node),
                                  batch_size=settings.batch_size, max_batch_delay_ms=settings.max_batch_delay_ms,
                                  initial_workers=max(settings.max_workers, 1), synchronous=True)
        spec = workflow.archive.spec
        if node in spec.models:
            await self._models.register(replace(request, url=spec.models[node][0]))
            return
        mar = await asyncio.to_thread(function_archive, workflow.archive, workflow.model_name(node), node)
        await self._models.register_file(replace(request, url=mar.name), mar)

    async def unregister(self, name: str) -> None:
        """``DELETE /workflows/{name}``: the workflow, then its models; a downloaded .war goes too."""
        workflow = self.get(name)
        del self._workflows[name]
        try:
            await self._unregister_nodes(workflow, list(workflow.archive.spec.nodes))
        finally:
            self._drop_files(workflow)

    async def _unregister_nodes(self, workflow: Workflow, nodes: list[str]) -> None:
        for node in nodes:
            try:
                await self._models.unregister(workflow.model_name(node), None)
            except NotFound:
                log.warning("workflow %s: its model %s was already gone", workflow.name, workflow.model_name(node))

    def _drop_files(self, workflow: Workflow) -> None:
        workflow.archive.remove()
        if workflow.downloaded is not None:
            remove_downloaded(workflow.downloaded)

    async def close(self) -> None:
        for workflow in self._workflows.values():
            self._drop_files(workflow)
        self._workflows.clear()


async def run_workflow(workflow: Workflow, request: Original, call: NodeCall) -> dict[str, bytes]:
    """Run the DAG for one request: each node starts once all its predecessors answered, parallel
    branches at once. Returns each leaf node's answer."""
    spec = workflow.archive.spec
    waiting = {node: len(spec.predecessors(node)) for node in spec.nodes}
    received: dict[str, dict[str, bytes]] = {node: {} for node in spec.nodes}
    leaves: dict[str, bytes] = {}
    running: dict[asyncio.Task[bytes], str] = {}

    def start(node: str, given: NodeInput) -> None:
        running[asyncio.ensure_future(_call_node(workflow, node, given, call))] = node

    start(next(node for node, count in waiting.items() if count == 0), request)
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                node = running.pop(task)
                answer = task.result()
                if not spec.dag.get(node):
                    leaves[node] = answer
                for nxt in spec.dag.get(node, ()):
                    received[nxt][node] = answer
                    waiting[nxt] -= 1
                    if waiting[nxt] == 0:
                        fields = received[nxt]
                        start(nxt, {"body": fields[node]} if len(fields) == 1 else dict(fields))
    finally:
        for task in running:
            task.cancel()
    return leaves


async def _call_node(workflow: Workflow, node: str, given: NodeInput, call: NodeCall) -> bytes:
    settings = workflow.node_settings(node)
    attempts = settings.retry_attempts + 1  # TorchServe retries after the first attempt
    for attempt in range(attempts):
        try:
            return await asyncio.wait_for(call(workflow.model_name(node), given), settings.timeout_ms / 1000)
        except (InferdError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else _message(exc)
            log.error("workflow %s: node %s failed (attempt %d of %d): %s", workflow.name, node, attempt + 1,
                      attempts, why)
    raise WorkflowFailed(f"Error executing {node}")


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, InferdError) else str(exc) or type(exc).__name__
