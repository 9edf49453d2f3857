"""Regenerate examples/models: an ONNX MLP, a TorchScript MLP, a torch.export model and a Python model.

    python examples/make_models.py [OUT]      # default: examples/models next to this file

Weights are seeded, so the files come out the same every time. Each model is well under 1 MB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent


class Mlp(torch.nn.Module):
    """16 -> 64 -> 4, with the input named ``x`` (torch.export takes names from forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return Mlp().eval()


def main(out: Path) -> None:
    model = mlp()
    example = torch.randn(2, 16)
    batch = torch.export.Dim("batch", min=1, max=1024)

    (out / "mlp_onnx/1").mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(out / "mlp_onnx/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      dynamo=False)

    (out / "mlp_torchscript/1").mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(out / "mlp_torchscript/1/model.pt"))

    (out / "mlp_export/1").mkdir(parents=True, exist_ok=True)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out / "mlp_export/1/model.pt2"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "models")
