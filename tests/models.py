"""Small models the tests build for themselves, and the same models run in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

TWO_OUT_CONFIG = """
max_batch_size = 8

[[input]]
name = "a"
datatype = "FP32"
shape = [3]

[[input]]
name = "b"
datatype = "INT64"
shape = [3]

[[output]]
name = "sum"
datatype = "FP32"
shape = [3]

[[output]]
name = "scaled"
datatype = "FP64"
shape = [3]
"""


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoOut(torch.nn.Module):
    """Two inputs of different dtypes, two outputs: exercises naming and ordering."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b.to(torch.float32), (a * 2).to(torch.float64)


def mlp() -> torch.nn.Module:
    return Mlp().eval()


def run_mlp(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return mlp()(torch.from_numpy(x)).numpy()


MLP_CONFIG = """
max_batch_size = 16

[[input]]
name = "x"
datatype = "FP32"
shape = [8]

[[output]]
name = "y"
datatype = "FP32"
shape = [5]
"""

PYTHON_MODEL = '''
import numpy as np

class Model:
    def load(self):
        self.offset = 10

    def infer(self, inputs):
        x = inputs["x"]
        if float(x.reshape(-1)[0]) == 666:
            raise ValueError("the model refuses 666")
        return {"y": x * 2 + self.offset, "n": np.array([x.size], dtype=np.int32)}
'''

PYTHON_CONFIG = """
backend = "python"

[[input]]
name = "x"
datatype = "FP64"
shape = [-1]

[[output]]
name = "y"
datatype = "FP64"
shape = [-1]

[[output]]
name = "n"
datatype = "INT32"
shape = [1]
"""

ECHO_MODEL = '''
class Model:
    def infer(self, inputs):
        return {"out": inputs["in"]}
'''

ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def build_repository(root: Path) -> None:
    model = mlp()
    example = torch.randn(2, 8)
    # ONNX, inputs read from the model, two versions (latest served by default)
    for version in (1, 2):
        (root / "mlp_onnx" / str(version)).mkdir(parents=True)
        torch.onnx.export(model, (example,), str(root / f"mlp_onnx/{version}/model.onnx"),
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    write(root / "mlp_onnx/config.toml", "max_batch_size = 16\n")
    # TorchScript with config
    (root / "mlp_ts/1").mkdir(parents=True)
    torch.jit.script(model).save(str(root / "mlp_ts/1/model.pt"))
    write(root / "mlp_ts/config.toml", MLP_CONFIG)
    # TorchScript with two inputs and two outputs
    (root / "two_out/1").mkdir(parents=True)
    torch.jit.script(TwoOut()).save(str(root / "two_out/1/model.pt"))
    write(root / "two_out/config.toml", TWO_OUT_CONFIG)
    # torch.export, tensors read from the program
    (root / "mlp_export/1").mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(root / "mlp_export/1/model.pt2"))
    write(root / "mlp_export/config.toml", "max_batch_size = 16\n")
    # Python models
    write(root / "py_double/1/model.py", PYTHON_MODEL)
    write(root / "py_double/config.toml", PYTHON_CONFIG)
    for datatype in ALL_TYPES:
        write(root / f"echo_{datatype.lower()}/1/model.py", ECHO_MODEL)
        write(root / f"echo_{datatype.lower()}/config.toml", echo_config(datatype))
    # broken models: each must be reported and must not stop the others
    write(root / "bad_config/config.toml", "max_batch_sise = 4\n")
    (root / "bad_config/1").mkdir(parents=True)
    (root / "bad_config/1/model.onnx").write_bytes(b"not onnx")
    (root / "corrupt_onnx/1").mkdir(parents=True)
    (root / "corrupt_onnx/1/model.onnx").write_bytes(b"\x00garbage\xff" * 10)
    (root / "ts_no_config/1").mkdir(parents=True)
    torch.jit.script(model).save(str(root / "ts_no_config/1/model.pt"))


def echo_config(datatype: str) -> str:
    tensors = [f'[[{kind}]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = [-1, -1]\n'
               for kind, name in (("input", "in"), ("output", "out"))]
    return 'backend = "python"\n\n' + "\n".join(tensors)
