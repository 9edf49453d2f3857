"""Regenerate the examples: the model repository, a TorchServe model store and a sample image.

    python examples/make_models.py [OUT]      # default: the examples/ folder holding this file

    OUT/models/mlp_onnx, mlp_torchscript, mlp_export   one seeded MLP (16 -> 4) in three formats
    OUT/models/mlp_tf            TF2 SavedModel: signatures serving_default (x) and add (a, b), label stable
    OUT/models/half_plus_two     TF1 graph as TF Serving's own test model: predict, classify, regress
    OUT/model_store/tiny_cnn.mar an image classifier archived by torch-model-archiver (image_classifier)
    OUT/kitten.jpg               a small drawn picture to send to it

text_stats (a Python model) is written by hand and not regenerated. The files come out byte for byte
the same on every run (seeded weights, fixed zip dates, no random ids or file paths inside), so
running this script leaves a clean checkout clean. Needs torch, onnx, tensorflow, pillow and
torch-model-archiver (``pip install -e '.[all,dev]'``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

# TorchScript writes a module's constants in set order and its source file's path into debug
# records: run again with a fixed hash seed, from this folder, with the file named "make_models.py"
_BOOT = ("import sys; main = sys.modules['__main__']; main.__file__ = 'make_models.py'; "
         "exec(compile(open('make_models.py').read(), 'make_models.py', 'exec'), main.__dict__)")
if __name__ == "__main__" and os.environ.get("MAKE_MODELS_PINNED") != "1":
    arguments = [str(Path(a).resolve()) for a in sys.argv[1:]]
    os.chdir(Path(__file__).resolve().parent)
    os.execve(sys.executable, [sys.executable, "-c", _BOOT, *arguments],
              {**os.environ, "PYTHONHASHSEED": "0", "MAKE_MODELS_PINNED": "1"})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ZIP_DATE = (2026, 1, 1, 0, 0, 0)
LABELS = ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx", "golden retriever",
          "pug", "goldfish", "teapot"]


class Mlp(torch.nn.Module):
    """16 -> 64 -> 4, with the input named ``x`` (torch.export takes names from forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyCnn(torch.nn.Module):
    """3×224×224 -> 10 classes: small enough to commit, shaped like an ImageNet classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=5, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.head = torch.nn.Linear(64, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return Mlp().eval()


def fixed_serialization_id(data: bytes) -> bytes:
    """torch writes a random ``.data/serialization_id`` into every archive: replace it (and its
    CRC, in the local and central headers) by digits derived from the rest of the file."""
    content = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".data/serialization_id"))
        old = archive.read(name)
        for other in sorted(set(archive.namelist()) - {name}):
            content.update(other.encode() + b"\0" + archive.read(other))
    digits = str(int(content.hexdigest(), 16))
    new = digits[:len(old)].encode()
    old_crc, new_crc = (struct.pack("<I", zlib.crc32(x)) for x in (old, new))
    assert data.count(old) == 1 and data.count(old_crc) >= 2, "unexpected torch archive layout"
    data = data.replace(old, new).replace(old_crc, new_crc)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
    return data


def save_torchscript(module: torch.nn.Module, path: Path) -> None:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    path.write_bytes(without_debug_records(buffer.getvalue()))


def without_debug_records(data: bytes) -> bytes:
    """TorchScript's debug records (``*.debug_pkl``: source ranges) hold the path torch is
    installed at; loading does not need them. Dropped, so the archive has the same bytes wherever
    torch lives (a venv, the system's site-packages)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        kept = [(name, archive.read(name)) for name in archive.namelist() if not name.endswith(".debug_pkl")]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, content in kept:
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), content)
    return fixed_serialization_id(out.getvalue())


def save_exported(program: Any, path: Path) -> None:
    for node in program.graph_module.graph.nodes:  # stack traces name this file's path
        node.meta.pop("stack_trace", None)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(fixed_serialization_id(buffer.getvalue()))


def make_mlps(models: Path) -> None:
    model = mlp()
    example = torch.randn(2, 16)
    batch = torch.export.Dim("batch", min=1, max=1024)

    (models / "mlp_onnx/1").mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(models / "mlp_onnx/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      dynamo=False)

    (models / "mlp_torchscript/1").mkdir(parents=True, exist_ok=True)
    save_torchscript(model, models / "mlp_torchscript/1/model.pt")

    (models / "mlp_export/1").mkdir(parents=True, exist_ok=True)
    # a dynamic dim 0: with max_batch_size > 0 a fixed one is refused at load
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    save_exported(program, models / "mlp_export/1/model.pt2")


def make_mlp_tf(models: Path) -> None:
    """Two signatures and a version label, for TF Serving's REST and gRPC examples."""
    import tensorflow as tf

    tf.random.set_seed(0)

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32) / 10.0, [4, 3]), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.nn.relu(tf.matmul(x, self.w))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="a"),
                                      tf.TensorSpec([None], tf.float32, name="b")])
        def add(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"sum": a + b}

    module = Mlp()
    target = models / "mlp_tf/1"
    shutil.rmtree(target, ignore_errors=True)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.predict, "add": module.add})
    fix_fingerprint_uuid(target / "fingerprint.pb")
    (models / "mlp_tf/config.toml").write_text("# TF Serving's version labels: /v1/models/mlp_tf/labels/stable\n"
                                               "[version_labels]\nstable = 1\n")


def fix_fingerprint_uuid(path: Path) -> None:
    """TF writes a random uuid into fingerprint.pb; derive it from the content hashes instead."""
    from tensorflow.core.protobuf import fingerprint_pb2

    fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
    fingerprint.uuid = str(fingerprint.saved_model_checksum)
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def make_half_plus_two(models: Path) -> None:
    """y = 0.5 * x + 2, fed directly (predict) or as tf.Examples (classify, regress), as TF Serving's
    saved_model_half_plus_two.py writes it."""
    import tensorflow as tf

    v1 = tf.compat.v1
    utils = v1.saved_model.signature_def_utils
    info = v1.saved_model.utils.build_tensor_info
    target = models / "half_plus_two/1"
    shutil.rmtree(target, ignore_errors=True)
    with tf.Graph().as_default():
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})
        a, b = v1.Variable(0.5, name="a"), v1.Variable(2.0, name="b")
        x = tf.identity(tf.reshape(parsed["x"], [-1, 1]), name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        signatures = {
            "serving_default": utils.build_signature_def(
                {"x": info(x)}, {"y": info(y)}, v1.saved_model.signature_constants.PREDICT_METHOD_NAME),
            "classify_x_to_y": utils.classification_signature_def(serialized, None, y),
            "regress_x_to_y": utils.regression_signature_def(serialized, y),
        }
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(target))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()


def rezip(source: Path, target: Path) -> None:
    """Write an archive again with fixed dates and TorchServe's manifest time fixed."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in sorted(archive.namelist()):
            data = archive.read(name)
            if name == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["createdOn"] = "01/01/2026 00:00:00"
                data = json.dumps(manifest, indent=2).encode()
            entry = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            out.writestr(entry, data)


def make_archive(store: Path) -> None:
    """tiny_cnn.mar: TorchServe's built-in image_classifier handler with index_to_name.json."""
    torch.manual_seed(7)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        save_torchscript(TinyCnn().eval(), work / "tiny_cnn.pt")
        (work / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(LABELS)}))
        subprocess.run(["torch-model-archiver", "--model-name", "tiny_cnn", "--version", "1.0",
                        "--serialized-file", str(work / "tiny_cnn.pt"), "--handler", "image_classifier",
                        "--extra-files", str(work / "index_to_name.json"), "--export-path", str(work), "-f"],
                       check=True)
        rezip(work / "tiny_cnn.mar", store / "tiny_cnn.mar")


def make_image(path: Path) -> None:
    """A drawn cat's face, 96×96: something for the classifier to look at (it is not trained)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (90, 140, 200))
    draw = ImageDraw.Draw(image)
    draw.polygon([(18, 40), (26, 8), (44, 30)], fill=(230, 140, 50))
    draw.polygon([(78, 40), (70, 8), (52, 30)], fill=(230, 140, 50))
    draw.ellipse((14, 22, 82, 88), fill=(240, 150, 60))
    for eye in (34, 62):
        draw.ellipse((eye - 6, 44, eye + 6, 56), fill=(40, 160, 60))
        draw.ellipse((eye - 2, 45, eye + 2, 55), fill=(0, 0, 0))
    draw.polygon([(44, 62), (52, 62), (48, 67)], fill=(220, 90, 110))
    image.save(path, format="JPEG", quality=85)


def main(out: Path) -> None:
    make_mlps(out / "models")
    make_mlp_tf(out / "models")
    make_half_plus_two(out / "models")
    make_archive(out / "model_store")
    make_image(out / "kitten.jpg")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
