"""TorchServe archives built with the real torch-model-archiver, for the TorchServe drop-in tests."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import torch

LABELS = {str(i): [f"n0{i}", f"label_{i}"] for i in range(10)}

EAGER_MODEL = '''
import torch


class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * 2
'''

CUSTOM_HANDLER = '''
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class ScaledHandler(BaseHandler):
    """Takes {"values": [...]} per request, answers {"scores": [...], "n": batch size}."""

    def preprocess(self, data):
        rows = []
        for row in data:
            payload = row.get("data") or row.get("body")  # a dict when sent as application/json
            if isinstance(payload, (bytes, bytearray)):
                payload = json.loads(payload)
            rows.append(payload["values"])
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        return [{"scores": row, "n": len(data)} for row in data.tolist()]
'''


class TinyCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=5, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def archive(out: Path, name: str, serialized: Path, handler: str, version: str = "1.0",
            model_file: Path | None = None, extra: list[Path] | None = None,
            config_file: Path | None = None, archive_format: str = "default",
            requirements_file: Path | None = None) -> Path:
    """``name``.mar in ``out`` (``archive_format="no-archive"``: the folder ``out/name``; "tgz": ``name``.tar.gz)."""
    command = ["torch-model-archiver", "--model-name", name, "--version", version, "--serialized-file",
               str(serialized), "--handler", handler, "--export-path", str(out), "-f",
               "--archive-format", archive_format]
    if config_file is not None:
        command += ["--config-file", str(config_file)]
    if model_file is not None:
        command += ["--model-file", str(model_file)]
    if requirements_file is not None:
        command += ["--requirements-file", str(requirements_file)]
    if extra:
        command += ["--extra-files", ",".join(map(str, extra))]
    subprocess.run(command, check=True, capture_output=True)
    suffix = {"no-archive": "", "tgz": ".tar.gz"}.get(archive_format, ".mar")
    return out / f"{name}{suffix}"


def handler_archive(root: Path, name: str, handler: str) -> tuple[Path, Path]:
    """``name``.mar of a handler's source alone (an empty serialized file) in ``root/store``; returns
    ``(root/work, root/store)``, the work folder for what else a test writes."""
    work, store = root / "work", root / "store"
    work.mkdir()
    store.mkdir()
    (work / "handler.py").write_text(handler)
    (work / "empty.pt").write_bytes(b"")
    archive(store, name, work / "empty.pt", str(work / "handler.py"))
    return work, store


def build_store(root: Path) -> Path:
    """A model store with a TorchScript MLP (built-in handler), an eager model with a custom handler,
    and an image classifier with labels."""
    work, store = root / "work", root / "store"
    work.mkdir(parents=True)
    store.mkdir()
    torch.jit.script(Mlp().eval()).save(str(work / "mlp.pt"))
    archive(store, "ts_mlp", work / "mlp.pt", "base_handler")
    archive(store, "ts_mlp_v2", work / "mlp.pt", "base_handler", version="2.0")
    (work / "model.py").write_text(textwrap.dedent(EAGER_MODEL))
    (work / "handler.py").write_text(textwrap.dedent(CUSTOM_HANDLER))
    namespace: dict = {}
    exec(textwrap.dedent(EAGER_MODEL), namespace)
    torch.manual_seed(5)
    eager = namespace["Doubler"]()
    torch.save(eager.state_dict(), work / "doubler.pth")
    archive(store, "doubler", work / "doubler.pth", str(work / "handler.py"), model_file=work / "model.py")
    torch.jit.script(TinyCnn().eval()).save(str(work / "cnn.pt"))
    (work / "index_to_name.json").write_text(json.dumps(LABELS))
    archive(store, "classifier", work / "cnn.pt", "image_classifier", extra=[work / "index_to_name.json"])
    return store


def doubler_in_process(store_work: Path, values: list[list[float]]) -> list[list[float]]:
    namespace: dict = {}
    exec(textwrap.dedent(EAGER_MODEL), namespace)
    model = namespace["Doubler"]()
    model.load_state_dict(torch.load(store_work / "doubler.pth", weights_only=True))
    with torch.inference_mode():
        return model(torch.tensor(values)).tolist()


def reference_preprocess(raw: bytes) -> np.ndarray:
    """ImageNet preprocessing written out independently of inferd: shorter side to 256 (bilinear),
    centre 224 crop, scale to [0, 1], normalise, HWC -> CHW."""
    from PIL import Image

    image = Image.open(io.BytesIO(raw)).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    new = (256, int(h * scale)) if w <= h else (int(w * scale), 256)
    image = image.resize(new, Image.BILINEAR)
    x0, y0 = round((new[0] - 224) / 2), round((new[1] - 224) / 2)
    array = np.asarray(image.crop((x0, y0, x0 + 224, y0 + 224)), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((array - mean) / std).astype(np.float32).transpose(2, 0, 1)


def classify_in_process(raw: bytes, topk: int = 5) -> dict[str, float]:
    x = torch.from_numpy(reference_preprocess(raw))[None]
    with torch.inference_mode():
        probabilities = torch.softmax(TinyCnn().eval()(x), dim=1)[0]
    values, indexes = torch.topk(probabilities, topk)
    return {LABELS[str(i)][-1]: v for v, i in zip(values.tolist(), indexes.tolist(), strict=True)}


def image_bytes(kind: str, size: tuple[int, int], seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def copy_into_repository(store: Path, repo: Path) -> None:
    """The same archive also served from a model repository as <model>/<version>/model.mar."""
    (repo / "repo_mlp" / "1").mkdir(parents=True)
    shutil.copy(store / "ts_mlp.mar", repo / "repo_mlp" / "1" / "model.mar")
    (repo / "repo_mlp" / "config.toml").write_text('max_batch_size = 4\n[dynamic_batching]\nmax_queue_delay_ms = 2\n')


CONTEXT_HANDLER = '''
from ts.torch_handler.base_handler import BaseHandler


class ContextHandler(BaseHandler):
    """Answers what the context shows it: model-config.yaml's handler section, a request header,
    and sets the status and content type TorchServe's way."""

    def handle(self, data, context):
        answers = []
        for i, row in enumerate(data):
            body = row.get("body") or row.get("data") or b""
            if body == b"teapot":
                context.set_response_status(418, "I'm a teapot", i)
            if body == b"oom":
                raise MemoryError("no room for the batch")
            context.set_response_content_type(i, "application/json")
            answers.append({"greeting": context.model_yaml_config["handler"]["greeting"],
                            "header": context.get_request_header(i, "X-Trace"),
                            "url_path": context.get_request_header(i, "url_path"),
                            "batch": context.system_properties["batch_size"]})
        return answers
'''

MODEL_YAML = """
minWorkers: 2
maxWorkers: 3
batchSize: 4
maxBatchDelay: 7
responseTimeout: 33
deviceType: cpu
handler:
  greeting: hello from yaml
"""


def build_yaml_archive(store: Path) -> Path:
    """An archive with a model-config.yaml and a handler that reads its context."""
    work = store.parent / "yaml-work"
    work.mkdir(exist_ok=True)
    torch.jit.script(Mlp().eval()).save(str(work / "mlp.pt"))
    (work / "context_handler.py").write_text(textwrap.dedent(CONTEXT_HANDLER))
    (work / "model-config.yaml").write_text(MODEL_YAML)
    return archive(store, "yaml_model", work / "mlp.pt", str(work / "context_handler.py"),
                   config_file=work / "model-config.yaml")


STATEFUL_HANDLER = '''
import os

from ts.torch_handler.base_handler import BaseHandler


class RunningSum(BaseHandler):
    """TorchServe's stateful example, without its LRU: each request adds its number to its
    sequence's sum; a sequence's start header starts it again, its end header forgets it."""

    def initialize(self, context):
        self.sums = {}
        self.initialized = True

    def handle(self, data, context):
        answers = []
        for idx, row in enumerate(data):
            sequence = context.get_sequence_id(idx)
            start = context.get_request_header(idx, context.header_key_sequence_start)
            end = context.get_request_header(idx, context.header_key_sequence_end)
            total = (0 if start else self.sums.get(sequence, 0)) + int(row.get("data") or row.get("body"))
            self.sums[sequence] = total
            if end:
                del self.sums[sequence]
            answers.append({"sequence_id": sequence, "sum": total, "start": start, "end": end, "batch": len(data),
                            "worker": os.getpid()})
        return answers
'''

FAILING_HANDLER = '''
import time

from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException


class Failing(BaseHandler):
    """Fails as its input says: "raise", "prediction:<code>" (PredictionException), "status:<code>"
    (context.set_response_status), "sleep:<seconds>" (then answers); anything else is echoed."""

    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        said = bytes(data[0].get("data") or data[0].get("body")).decode()
        kind, _, code = said.partition(":")
        if kind == "raise":
            raise ValueError("told to raise")
        if kind == "prediction":
            raise PredictionException(f"refused with {code}", int(code))
        if kind == "sleep":
            time.sleep(float(code))
        if kind == "status":
            context.set_response_status(int(code), "told to", 0)
        return [said] * len(data)
'''


# TorchServe's examples/stateful/sequence_batching/model-config.yaml, with the idle time its Readme gives
# (the file's 10 ms would let a busy machine end a sequence between two requests)
SEQUENCE_YAML = """
minWorkers: 2
maxWorkers: 2
batchSize: 4
maxNumSequence: 4
sequenceMaxIdleMSec: 60000
maxSequenceJobQueueSize: 10
sequenceBatching: true
"""


def build_grpc_store(root: Path) -> Path:
    """A store with the stateful running-sum handler (``stateful``; ``sequences``: the same with
    TorchServe's sequenceBatching model-config.yaml) and the failing one (``failing``)."""
    work, store = root / "grpc-work", root / "grpc-store"
    work.mkdir(parents=True)
    store.mkdir()
    torch.jit.script(Mlp().eval()).save(str(work / "mlp.pt"))
    for name, source in (("stateful", STATEFUL_HANDLER), ("failing", FAILING_HANDLER)):
        (work / f"{name}_handler.py").write_text(textwrap.dedent(source))
        archive(store, name, work / "mlp.pt", str(work / f"{name}_handler.py"))
    (work / "model-config.yaml").write_text(SEQUENCE_YAML)
    archive(store, "sequences", work / "mlp.pt", str(work / "stateful_handler.py"),
            config_file=work / "model-config.yaml")
    return store


# a stateful model that holds few sequences (maxNumSequence) and few waiting requests of each
# (maxSequenceJobQueueSize), served by the failing handler ("sleep:<s>" keeps its sequence busy)
LIMITED_YAML = """
minWorkers: 1
maxWorkers: 1
maxNumSequence: 2
maxSequenceJobQueueSize: 1
sequenceMaxIdleMSec: 60000
sequenceTimeoutMSec: 900000
sequenceBatching: true
"""


def build_sequence_store(root: Path) -> Path:
    """The gRPC store (``build_grpc_store``) plus ``limited``: the failing handler as a stateful model
    of at most 2 sequences with at most 1 request waiting in each."""
    store = build_grpc_store(root)
    work = root / "grpc-work"
    (work / "limited.yaml").write_text(LIMITED_YAML)
    archive(store, "limited", work / "mlp.pt", str(work / "failing_handler.py"), config_file=work / "limited.yaml")
    return store


EXPLAINING_HANDLER = '''
import json
import time

import torch
from ts.torch_handler.base_handler import BaseHandler


def _payload(row):
    """The request's JSON: TorchServe parses an application/json body; other bodies come as bytes."""
    payload = row.get("data") or row.get("body")
    return json.loads(payload) if isinstance(payload, (bytes, bytearray)) else payload


class ExplainingHandler(BaseHandler):
    """Doubler's handler with its own explain_handle (input x gradient of the output ``target``,
    default 0) and describe_handle; every answer says the batch's size and its explain header.
    A request's ``sleep`` (seconds) holds its batch that long."""

    def preprocess(self, data):
        payloads = [_payload(row) for row in data]
        time.sleep(max(payload.get("sleep", 0) for payload in payloads))
        return torch.tensor([payload["values"] for payload in payloads], dtype=torch.float32)

    def postprocess(self, data):
        return [{"scores": row, "n": len(data), "explain": self.context.get_request_header(i, "explain")}
                for i, row in enumerate(data.tolist())]

    def explain_handle(self, data_preprocess, raw_data):
        targets = [_payload(row).get("target", 0) for row in raw_data]
        answers = []
        with torch.enable_grad():
            for i, target in enumerate(targets):
                x = data_preprocess[i:i + 1].clone().requires_grad_(True)
                self.model(x)[0, target].backward()
                answers.append({"attributions": (x * x.grad)[0].tolist(), "target": target, "n": len(raw_data),
                                "explain": self.context.get_request_header(i, "explain")})
        return answers

    def describe_handle(self):
        return {"handler": "ExplainingHandler", "inputs": 4, "explains": "input x gradient"}
'''

STATEFUL_DESCRIBER = '''
from ts.torch_handler.base_handler import BaseHandler


class StatefulDescriber(BaseHandler):
    """A stateful model's handler that echoes its requests and describes itself."""

    def initialize(self, context):
        self.context = context
        self.initialized = True

    def preprocess(self, data):
        return [bytes(row.get("data") or row.get("body")).decode() for row in data]

    def inference(self, data):
        return data

    def postprocess(self, data):
        return [{"echo": said, "sequence": self.context.get_sequence_id(i)} for i, said in enumerate(data)]

    def describe_handle(self):
        return {"stateful": True}
'''

EXPLAIN_YAML = """
batchSize: 4
maxBatchDelay: 200
"""


def build_explain_store(root: Path) -> Path:
    """``build_store``'s archives plus ``explainer``: the doubler's model with ExplainingHandler,
    batching up to 4 requests (model-config.yaml); and ``stateful_describer``, a stateful model
    whose handler has a describe_handle."""
    store = build_store(root)
    work = root / "work"
    (work / "explaining_handler.py").write_text(textwrap.dedent(EXPLAINING_HANDLER))
    (work / "explain.yaml").write_text(EXPLAIN_YAML)
    archive(store, "explainer", work / "doubler.pth", str(work / "explaining_handler.py"), model_file=work / "model.py",
            config_file=work / "explain.yaml")
    (work / "stateful_describer.py").write_text(textwrap.dedent(STATEFUL_DESCRIBER))
    (work / "sequence.yaml").write_text(SEQUENCE_YAML)
    archive(store, "stateful_describer", work / "mlp.pt", str(work / "stateful_describer.py"),
            config_file=work / "sequence.yaml")
    return store


def doubler_attributions(store_work: Path, values: list[float], target: int) -> list[float]:
    """Input x gradient of the doubler's output ``target``, written out: 2 * W[target] * x."""
    weights = torch.load(store_work / "doubler.pth", weights_only=True)["linear.weight"]
    return (2 * weights[target] * torch.tensor(values)).tolist()
