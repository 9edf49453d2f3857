"""model-config.yaml's ``pt2`` (TorchServe's BaseHandler compiles the model with torch.compile),
served by ``inferd torchserve`` with the real torch-model-archiver."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import requests
import torch

from tests import ts_archives
from tests.e2e.test_torchserve_cli import torchserve


@pytest.mark.parametrize(("pt2", "compiled"), [
    ("pt2:\n  compile:\n    enable: true\n    backend: eager\n", "Compiled model with backend eager"),
    ("pt2: eager\n", "Compiled model with backend eager"),  # TorchServe's older form: a backend name
    ("pt2:\n  compile:\n    enable: false\n    backend: eager\n", None),
])
def test_pt2_compiles_the_model_as_torchserve(tmp_path: Path, pt2: str, compiled: str | None) -> None:
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    (work / "model.py").write_text(textwrap.dedent(ts_archives.EAGER_MODEL))
    namespace: dict = {}
    exec(textwrap.dedent(ts_archives.EAGER_MODEL), namespace)
    torch.manual_seed(11)
    model = namespace["Doubler"]().eval()
    torch.save(model.state_dict(), work / "doubler.pth")
    (work / "model-config.yaml").write_text(pt2)
    ts_archives.archive(store, "compiled", work / "doubler.pth", "base_handler", model_file=work / "model.py",
                        config_file=work / "model-config.yaml")
    x = [[0.5, -1.0, 2.0, 0.25]]
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "compiled.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true"}) as urls:
        answer = requests.post(f"{urls['inference']}/predictions/compiled", json=x, timeout=120)
        assert answer.status_code == 200, answer.text
    with torch.inference_mode():
        expected = model(torch.tensor(x)).tolist()[0]
    assert answer.json()[0] == pytest.approx(expected, rel=1e-5)
    model_log = (tmp_path / "logs" / "model_log.log").read_text()
    if compiled is None:
        assert "Compiled model" not in model_log, model_log
    else:
        assert compiled in model_log, model_log
