"""Where a version folder's model.tflite serves: TF Serving's --prefer_tflite_model, and without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.errors import ConfigError
from inferd.repository.layout import find_artifact, read_model_folder, single_model


def saved_model_and_tflite(folder: Path, tflite: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    if tflite:
        (folder / "model.tflite").write_bytes(b"")
    return folder


def test_model_tflite_alone_is_a_tflite_artifact(tmp_path: Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.tflite").write_bytes(b"")
    assert find_artifact(version, None) == (version / "model.tflite", "tflite")
    assert read_model_folder(tmp_path / "m").versions == {1: version}
    assert single_model(tmp_path / "m")
    (tmp_path / "top.tflite").write_bytes(b"")
    assert find_artifact(tmp_path, None, "top.tflite") == (tmp_path / "top.tflite", "tflite")


def test_saved_model_wins_unless_tflite_is_preferred(tmp_path: Path) -> None:
    both = saved_model_and_tflite(tmp_path / "both")
    assert find_artifact(both, None) == (both, "tensorflow")
    assert find_artifact(both, None, prefer_tflite=True) == (both / "model.tflite", "tflite")
    assert find_artifact(both, "tensorflow", prefer_tflite=True) == (both / "model.tflite", "tflite")
    only_saved = saved_model_and_tflite(tmp_path / "saved", tflite=False)
    assert find_artifact(only_saved, None, prefer_tflite=True) == (only_saved, "tensorflow")  # TF Serving's fallback


def test_prefer_leaves_other_backends_and_named_files_alone(tmp_path: Path) -> None:
    both = saved_model_and_tflite(tmp_path / "both")
    (both / "model.onnx").write_bytes(b"")
    assert find_artifact(both, "onnx", prefer_tflite=True) == (both / "model.onnx", "onnx")
    assert find_artifact(both, None, "model.onnx", prefer_tflite=True) == (both / "model.onnx", "onnx")
    with pytest.raises(ConfigError, match="no model artifact"):
        find_artifact(saved_model_and_tflite(tmp_path / "saved", tflite=False), "tflite")
