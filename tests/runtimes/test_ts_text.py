"""The built-in text_classifier: TorchServe's text cleanup and tokenizing, answers as in-process."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from inferd.errors import ConfigError
from inferd.runtimes import handler
from inferd.runtimes.torchserve import read_manifest
from inferd.runtimes.ts_text import ngrams, normalize

TEXT_MODEL = '''
import torch


class TextNet(torch.nn.Module):
    """An EmbeddingBag classifier as TorchServe's text_classification example: forward(text, offsets)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.EmbeddingBag(20, 8, mode="mean")
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
'''

VOCAB = ["<unk>", "i", "do", "not", "like", "bad", "movies", "i do", "do not", "not like", "like bad",
         "bad movies", "good"]


def test_normalize_is_torchserves_cleanup() -> None:
    assert normalize("I don't like <b>Bad</b> movies!") == ["i", "do", "not", "like", "bad", "movies"]
    assert normalize("It's John's café, isn't it?") == ["it", "is", "johns", "cafe", "is", "not", "it"]
    assert list(ngrams(["here", "we", "are"], 2)) == ["here", "we", "are", "here we", "we are"]


def text_model_dir(tmp_path: Path, vocab: object) -> Path:
    (tmp_path / "textnet.py").write_text(textwrap.dedent(TEXT_MODEL))
    sys.path.insert(0, str(tmp_path))
    import textnet

    torch.save(textnet.TextNet().state_dict(), tmp_path / "textnet.pth")
    torch.save(vocab, tmp_path / "source_vocab.pt")
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "negative", "1": "neutral", "2": "positive"}))
    manifest = {"model": {"handler": "text_classifier", "modelFile": "textnet.py", "serializedFile": "textnet.pth"}}
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.fixture(autouse=True)
def _forget_textnet(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    sys.modules.pop("textnet", None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_text_classifier_answers_as_in_process(tmp_path: Path) -> None:
    model_dir = text_model_dir(tmp_path, {token: i for i, token in enumerate(VOCAB)})
    runtime = handler.build("textnet", model_dir, read_manifest(model_dir), 1, None)
    body = np.empty(1, dtype=object)
    body[:] = [b"I don't like <b>Bad</b> movies, ever!"]
    kinds = np.empty(1, dtype=object)
    kinds[:] = [b"text/plain"]
    answer = json.loads(runtime.infer({"body": body, "content_type": kinds})["output"][0])
    import textnet

    model = textnet.TextNet()
    model.load_state_dict(torch.load(model_dir / "textnet.pth"))
    ids = [1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 0]  # words, then 2-grams; "ever" is unknown
    with torch.inference_mode():
        expected = torch.softmax(model(torch.tensor(ids), torch.tensor([0])), dim=-1)[0].tolist()
    assert list(answer) == ["negative", "neutral", "positive"]
    np.testing.assert_allclose(list(answer.values()), expected, rtol=1e-6)


def test_a_vocabulary_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    model_dir = text_model_dir(tmp_path, torch.zeros(3))
    with pytest.raises(ConfigError, match=r"\{token: index\} dict"):
        handler.build("textnet", model_dir, read_manifest(model_dir), 1, None)


def test_a_pickled_torchtext_vocab_names_the_package(tmp_path: Path) -> None:
    """torchtext is not installed here: a stand-in module of that name pickles the way its Vocab does."""
    package = tmp_path / "fake" / "torchtext"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "vocab.py").write_text("class Vocab:\n    pass\n")
    sys.path.insert(0, str(tmp_path / "fake"))
    try:
        import torchtext.vocab  # type: ignore[import-not-found]

        model_dir = text_model_dir(tmp_path, torchtext.vocab.Vocab())
        with pytest.raises(ConfigError, match="needs the package 'torchtext'"):
            handler.build("textnet", model_dir, read_manifest(model_dir), 1, None)
    finally:
        sys.path.remove(str(tmp_path / "fake"))
        sys.modules.pop("torchtext.vocab", None)
        sys.modules.pop("torchtext", None)


def _explain(runtime: handler.HandlerRuntime, text: bytes, target: int) -> np.ndarray:
    body, kinds = np.empty(1, dtype=object), np.empty(1, dtype=object)
    body[:] = [text]
    kinds[:] = [b"text/plain\r\nexplain: True"]
    return runtime.infer({"body": body, "content_type": kinds})["output"][0]


def test_text_classifier_explains_with_captum_as_torchserves_get_insights(tmp_path: Path) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model_dir = text_model_dir(tmp_path, {token: i for i, token in enumerate(VOCAB)})
    runtime = handler.build("textnet", model_dir, read_manifest(model_dir), 1, None)
    answer = json.loads(_explain(runtime, b"I don't like bad movies", 0))
    import textnet

    model = textnet.TextNet()
    model.load_state_dict(torch.load(model_dir / "textnet.pth"))
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    raw = captum_attr.LayerIntegratedGradients(model, model.embedding).attribute(
        ids, torch.zeros_like(ids), additional_forward_args=(torch.tensor([0])), target=0)
    expected = torch.softmax(raw, dim=1)
    expected = expected / torch.norm(expected.sum(dim=-1))
    assert answer["words"] == ["i", "do", "not", "like", "bad", "movies"]
    np.testing.assert_allclose(answer["importances"], expected.tolist(), rtol=1e-5)


def test_without_captum_text_classifier_explanations_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("captum", "captum.attr"):  # as on a machine without it (None: an import raises ImportError)
        monkeypatch.setitem(sys.modules, module, None)
    model_dir = text_model_dir(tmp_path, {token: i for i, token in enumerate(VOCAB)})
    runtime = handler.build("textnet", model_dir, read_manifest(model_dir), 1, None)
    with pytest.raises(RuntimeError, match=r"text_classifier need captum"):
        _explain(runtime, b"I like movies", 0)
