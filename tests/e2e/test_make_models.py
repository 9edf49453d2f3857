"""examples/make_models.py is deterministic: a fresh run, elsewhere, writes the committed bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

GENERATED = ["models/mlp_onnx/1/model.onnx", "models/mlp_torchscript/1/model.pt", "models/mlp_export/1/model.pt2",
             "models/mlp_tf/1/saved_model.pb", "models/mlp_tf/1/fingerprint.pb",
             "models/mlp_tf/1/variables/variables.index", "models/mlp_tf/1/variables/variables.data-00000-of-00001",
             "models/mlp_tf/config.toml", "models/half_plus_two/1/saved_model.pb",
             "models/half_plus_two/1/variables/variables.index",
             "models/half_plus_two/1/variables/variables.data-00000-of-00001",
             "model_store/tiny_cnn.mar", "kitten.jpg"]


def test_make_models_writes_the_committed_bytes(tmp_path: Path) -> None:
    # run from another folder with a relative output path: neither may change a byte
    subprocess.run([sys.executable, str(ROOT / "examples/make_models.py"), "out"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=290)
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == sorted(GENERATED)
    different = [name for name in GENERATED
                 if (tmp_path / "out" / name).read_bytes() != (ROOT / "examples" / name).read_bytes()]
    assert different == []
