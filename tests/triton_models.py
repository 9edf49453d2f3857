"""A Triton model repository written for Triton (config.pbtxt, TritonPythonModel), built here: the
models Triton's client examples call (simple, simple_string, simple_identity, simple_int8), an ONNX
and a TorchScript model with Triton's naming, and broken ones.

``python -m tests.triton_models DIR`` writes it to DIR."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

# Python backend: INPUT0 + INPUT1 and INPUT0 - INPUT1 of a numeric type, or (simple_string) of
# strings holding integers. Written as a Triton user writes one.
ADD_SUB = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.name = args["model_name"]
        out0 = pb_utils.get_output_config_by_name(self.model_config, "OUTPUT0")
        self.out_dtype = pb_utils.triton_string_to_numpy(out0["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if self.out_dtype == np.object_:
                a, b = a.astype(np.int64), b.astype(np.int64)
                total, diff = (a + b).astype(str).astype(np.object_), (a - b).astype(str).astype(np.object_)
            else:
                if (a < 0).any() and self.name == "simple":
                    responses.append(pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("simple adds non-negative numbers only")))
                    continue
                total, diff = (a + b).astype(self.out_dtype), (a - b).astype(self.out_dtype)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", total), pb_utils.Tensor("OUTPUT1", diff)]))
        return responses

    def finalize(self):
        pass
'''

IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
'''


def add_sub_config(name: str, data_type: str, max_batch_size: int = 8, extra: str = "") -> str:
    tensors = "\n".join(
        f'{kind} [ {{ name: "{n}" data_type: {data_type} dims: [ 16 ] }} ]'
        for kind, n in (("input", "INPUT0"), ("input", "INPUT1"), ("output", "OUTPUT0"), ("output", "OUTPUT1")))
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n{tensors}\n{extra}'


SIMPLE_BATCHING = """
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

ONNX_CONFIG = """
name: "onnx_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 5 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { graph { level: 1 } input_pinned_memory { enable: true } priority: PRIORITY_MAX }
parameters { key: "execution_mode" value: { string_value: "0" } }
parameters { key: "enable_mem_pattern" value: { string_value: "0" } }
"""

TORCH_CONFIG = """
name: "torch_mlp"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 5 ] } ]
parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }
parameters: { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } }
"""


# TwoOut (a + b as FP32, a * 2 as FP64) with its outputs declared in the other order
TWO_OUT_CONFIG = """
name: "torch_two_out"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] },
        { name: "INPUT__1" data_type: TYPE_INT32 dims: [ 2 ] } ]
output [ { name: "OUTPUT__1" data_type: TYPE_FP64 dims: [ 2 ] },
         { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


# a Triton Python model taking IN and answering OUT (FP32 [2]); {extra}: more keys (a transaction policy, ...)
IN_OUT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
{extra}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }} ]
"""


def call_in_out(server: Any, model: str, values: list[float]) -> np.ndarray:
    """An IN_OUT_CONFIG model's OUT for IN = ``values``, over HTTP with tritonclient."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("IN", [2], "FP32")
    tensor.set_data_from_numpy(np.array(values, np.float32))
    return client.infer(model, [tensor]).as_numpy("OUT")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def python_models(root: Path) -> list[str]:
    """The Python-backend models of Triton's client examples; returns their names."""
    write(root / "simple/1/model.py", ADD_SUB)
    write(root / "simple/config.pbtxt", add_sub_config("simple", "TYPE_INT32", extra=SIMPLE_BATCHING))
    write(root / "simple_int8/1/model.py", ADD_SUB)
    write(root / "simple_int8/config.pbtxt", add_sub_config("simple_int8", "TYPE_INT8"))
    write(root / "simple_string/1/model.py", ADD_SUB)
    write(root / "simple_string/config.pbtxt", add_sub_config("simple_string", "TYPE_STRING"))
    write(root / "simple_identity/1/model.py", IDENTITY)
    write(root / "simple_identity/config.pbtxt", """
        name: "simple_identity"
        backend: "python"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        """)
    return ["simple", "simple_int8", "simple_string", "simple_identity"]


def framework_models(root: Path) -> None:
    """ONNX (onnxruntime_onnx) and TorchScript (pytorch_libtorch, INPUT__0/OUTPUT__0), with their
    backends' optimization and parameters as a Triton repository writes them (and an ONNX one whose
    parameter cannot work here)."""
    import torch

    from tests.models import TwoOut, mlp

    model = mlp()
    (root / "onnx_mlp/1").mkdir(parents=True)
    torch.onnx.export(model, (torch.randn(2, 8),), str(root / "onnx_mlp/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    write(root / "onnx_mlp/config.pbtxt", ONNX_CONFIG)
    (root / "torch_mlp/1").mkdir(parents=True)
    torch.jit.script(model).save(str(root / "torch_mlp/1/model.pt"))
    write(root / "torch_mlp/config.pbtxt", TORCH_CONFIG)
    # the same TorchScript (FP32 out) declared INT32 out: Triton's libtorch backend refuses each call
    (root / "torch_int32_out/1").mkdir(parents=True)
    (root / "torch_int32_out/1/model.pt").write_bytes((root / "torch_mlp/1/model.pt").read_bytes())
    write(root / "torch_int32_out/config.pbtxt", TORCH_CONFIG.replace('"torch_mlp"', '"torch_int32_out"').replace(
        'OUTPUT__0" data_type: TYPE_FP32', 'OUTPUT__0" data_type: TYPE_INT32'))
    # OUTPUT__1 of a model with one output; and two outputs declared out of order (the index decides)
    (root / "torch_no_output_1/1").mkdir(parents=True)
    (root / "torch_no_output_1/1/model.pt").write_bytes((root / "torch_mlp/1/model.pt").read_bytes())
    write(root / "torch_no_output_1/config.pbtxt", TORCH_CONFIG.replace('"torch_mlp"', '"torch_no_output_1"')
          .replace('"OUTPUT__0"', '"OUTPUT__1"'))
    (root / "torch_two_out/1").mkdir(parents=True)
    torch.jit.script(TwoOut()).save(str(root / "torch_two_out/1/model.pt"))
    write(root / "torch_two_out/config.pbtxt", TWO_OUT_CONFIG)
    # an arena this CPU instance has not: onnxruntime would fail each run with it, so the load fails
    (root / "arena_elsewhere/1").mkdir(parents=True)
    (root / "arena_elsewhere/1/model.onnx").write_bytes((root / "onnx_mlp/1/model.onnx").read_bytes())
    write(root / "arena_elsewhere/config.pbtxt", ONNX_CONFIG.replace('"onnx_mlp"', '"arena_elsewhere"') + (
        'parameters { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0;gpu:0" } }\n'))


def broken_models(root: Path) -> None:
    """A key inferd does not serve, a version policy that selects no version, and a model with both
    files (config.toml wins)."""
    write(root / "no_versions/1/model.py", IDENTITY)
    write(root / "no_versions/config.pbtxt", 'backend: "python"\nversion_policy: { latest: { num_versions: 0 } }\n')
    write(root / "repository_agents/1/model.py", IDENTITY)
    write(root / "repository_agents/config.pbtxt",
          'backend: "python"\nmodel_repository_agents { agents [ { name: "checksum" } ] }\n')
    write(root / "both/1/model.py", IDENTITY)
    write(root / "both/config.pbtxt", 'backend: "python"\nmax_batch_size: 99\n')
    write(root / "both/config.toml", 'backend = "python"\n[[input]]\nname = "INPUT0"\ndatatype = "BYTES"\n'
                                     'shape = [-1]\n[[output]]\nname = "OUTPUT0"\ndatatype = "BYTES"\nshape = [-1]\n')


if __name__ == "__main__":
    target = Path(sys.argv[1])
    python_models(target)
    if "--python-only" not in sys.argv:
        framework_models(target)
