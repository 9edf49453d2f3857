"""What a .mar's model-config.yaml asks of a model repository's configuration (no server): its
sequenceBatching, as `inferd torchserve` reads it (pytorch/serve 62c4d6a1, ModelConfig and Model)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from inferd.config import DynamicBatching, ModelConfig, SequenceBatching
from inferd.repository.archives import archive_info, with_archive_sequences
from inferd.types import SequenceSettings

STATEFUL = "sequenceBatching: true\nsequenceMaxIdleMSec: 5000\nmaxNumSequence: 3\n"


def write_archive(path: Path, yaml: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"runtime": "python", "model": {"modelName": "m", "handler": "handler.py", "configFile": "config.yaml"}}
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        bundle.writestr("config.yaml", yaml)
    return path


def test_a_stateful_archive_gets_the_sequence_batcher_with_torchserves_limits(tmp_path: Path) -> None:
    """maxNumSequence as given, maxSequenceJobQueueSize 1 when not given (TorchServe's default);
    dynamic batching gives way to it; a batch takes the oldest ready request of any live sequences."""
    write_archive(tmp_path / "1" / "model.mar", STATEFUL)
    config = with_archive_sequences(ModelConfig(dynamic_batching=DynamicBatching()), tmp_path / "1")
    assert config.dynamic_batching is None
    assert config.sequence_batching == SequenceBatching(max_sequence_idle_us=5_000_000, implicit_start=True,
                                                        max_sequences=3, max_queued_per_sequence=1,
                                                        strategy="oldest", max_candidate_sequences=3)


def test_sequence_timeout_msec_is_the_sequences_lifetime(tmp_path: Path) -> None:
    write_archive(tmp_path / "1" / "model.mar", STATEFUL + "sequenceTimeoutMSec: 900\n")
    config = with_archive_sequences(ModelConfig(), tmp_path / "1")
    assert config.sequence_batching is not None and config.sequence_batching.max_sequence_lifetime_us == 900_000


@pytest.mark.parametrize(("yaml", "config"), [
    ("sequenceBatching: true\n", ModelConfig()),  # no sequenceMaxIdleMSec: TorchServe batches by sequence only with it
    ("sequenceBatching: yes please\nsequenceMaxIdleMSec: 10\n", ModelConfig()),  # not a boolean true
    (STATEFUL, ModelConfig(backend="onnx")),  # not the archive's backend
    (STATEFUL, ModelConfig(sequence_batching=SequenceBatching(max_sequence_idle_us=7))),  # the configuration's own
], ids=["no-idle-time", "not-true", "other-backend", "own-sequence-batching"])
def test_what_is_left_as_configured(tmp_path: Path, yaml: str, config: ModelConfig) -> None:
    write_archive(tmp_path / "1" / "model.mar", yaml)
    assert with_archive_sequences(config, tmp_path / "1") == config


def test_the_archive_the_default_model_filename_names(tmp_path: Path) -> None:
    write_archive(tmp_path / "1" / "legacy.mar", STATEFUL)
    assert with_archive_sequences(ModelConfig(), tmp_path / "1").sequence_batching is None
    named = with_archive_sequences(ModelConfig(default_model_filename="legacy.mar"), tmp_path / "1")
    assert named.sequence_batching is not None and named.sequence_batching.max_sequences == 3


def test_a_model_config_yaml_nested_too_deep_is_a_load_error_saying_so() -> None:
    from inferd.errors import ConfigError
    from inferd.repository.archives import read_model_yaml

    with pytest.raises(ConfigError, match=r"model-config\.yaml nests too deeply to read"):
        read_model_yaml("a: " + "[" * 50_000 + "]" * 50_000, "m.mar")


@pytest.mark.parametrize(("yaml", "settings"), [
    (STATEFUL + "sequenceTimeoutMSec: 800\n", SequenceSettings(True, 5000, 800, 3, 1)),
    ("sequenceBatching: true\n", SequenceSettings(stateful=True)),  # without sequenceMaxIdleMSec the rest stay 0
    ("sequenceMaxIdleMSec: 10\nmaxNumSequence: 0\nmaxSequenceJobQueueSize: 4\n", SequenceSettings(False, 10, 0, 1, 4)),
    ("batchSize: 4\n", SequenceSettings()),
], ids=["stateful", "no-idle-time", "idle-time-only", "none"])
def test_the_sequence_settings_describe_answers(tmp_path: Path, yaml: str, settings: SequenceSettings) -> None:
    """As TorchServe's Model reads them for DescribeModelResponse (pytorch/serve 62c4d6a1): the limits
    and timeout only with sequenceMaxIdleMSec > 0, whether or not sequenceBatching is on; the
    limits at least 1."""
    assert archive_info(write_archive(tmp_path / "m.mar", yaml)).sequence_settings() == settings
