"""[image] inputs: a torch model takes JPEG bytes (BYTES, one a row) and gets them decoded, resized,
cropped and normalised. On the CPU Pillow does it (the same numbers as the built-in classifier's
preprocessing); the GPU path's resize/crop/normalise (torch ops, run here on the CPU) agrees with
Pillow's within one 8-bit level; what is not a JPEG is a 400 naming the row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inferd.config import ImageInput, parse_model_config
from inferd.errors import ConfigError, InvalidInput
from inferd.runtimes.base import LoadContext
from inferd.runtimes.builtin_handlers import imagenet_array
from inferd.runtimes.torch import TorchRuntime, load
from inferd.runtimes.torch_image import pil_array, resize_crop_normalize

# one 8-bit level in normalised units for the smallest std: Pillow rounds its resize to uint8
ONE_LEVEL = 1 / 255 / 0.224 + 1e-4
IMAGE = {"resize": 40, "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


def jpeg(height: int, width: int, seed: int) -> bytes:
    """A smooth photo-like JPEG (random blocks upscaled), as a camera would send."""
    blocks = np.random.default_rng(seed).integers(0, 255, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize((width, height), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decoded(raw: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1).copy())


@pytest.mark.parametrize(("height", "width"), [(480, 640), (300, 200), (224, 224)])
def test_the_device_path_resizes_like_pillow_within_one_level(height: int, width: int) -> None:
    raw = jpeg(height, width, seed=height)
    got = resize_crop_normalize(torch, [decoded(raw)], ImageInput(), torch.device("cpu"))
    assert got.shape == (1, 3, 224, 224) and got.dtype == torch.float32
    np.testing.assert_allclose(got[0].numpy(), pil_array(raw, ImageInput()), atol=ONE_LEVEL)


def test_a_batch_of_mixed_sizes_keeps_each_frame_in_its_row() -> None:
    """Frames of one size are resized together; each answer row is still its own frame's."""
    sizes = [(480, 640), (300, 200), (480, 640), (224, 224), (300, 200), (480, 640)]
    raws = [jpeg(height, width, seed=row) for row, (height, width) in enumerate(sizes)]
    got = resize_crop_normalize(torch, [decoded(raw) for raw in raws], ImageInput(), torch.device("cpu"))
    assert got.shape == (len(raws), 3, 224, 224)
    for row, raw in enumerate(raws):
        np.testing.assert_allclose(got[row].numpy(), pil_array(raw, ImageInput()), atol=ONE_LEVEL)
    one_size = resize_crop_normalize(torch, [decoded(raws[0]), decoded(raws[2])], ImageInput(), torch.device("cpu"))
    np.testing.assert_allclose(one_size.numpy(), got[[0, 2]].numpy(), atol=1e-5)


def test_one_frame_of_a_size_among_many_of_another_is_resized_as_alone() -> None:
    """Grouping by size changes no number: each row equals its frame resized alone, whichever
    group it fell in and wherever it sits (first, between, last); no frames is no rows."""
    frames = [decoded(jpeg(300, 200, seed=0)), *(decoded(jpeg(480, 640, seed=s)) for s in range(1, 4)),
              decoded(jpeg(120, 90, seed=4)), decoded(jpeg(480, 640, seed=5))]
    frames.insert(2, frames[0].permute(0, 2, 1).contiguous().permute(0, 2, 1))  # a strided view of 300x200
    got = resize_crop_normalize(torch, frames, ImageInput(), torch.device("cpu"))
    alone = torch.cat([resize_crop_normalize(torch, [frame], ImageInput(), torch.device("cpu")) for frame in frames])
    np.testing.assert_allclose(got.numpy(), alone.numpy(), atol=1e-5)
    assert not np.allclose(got[0].numpy(), got[1].numpy())
    assert resize_crop_normalize(torch, [], ImageInput(), torch.device("cpu")).shape == (0, 3, 224, 224)


def test_the_builtin_classifier_preprocessing_is_unchanged() -> None:
    """imagenet_array now runs through the shared Pillow pipeline: same numbers as written out."""
    raw = jpeg(300, 400, seed=1)
    image = Image.open(io.BytesIO(raw)).convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
    left, top = round((341 - 224) / 2.0), 16
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_array_equal(imagenet_array(Image.open(io.BytesIO(raw))),
                                  ((pixels - mean) / std).transpose(2, 0, 1))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def tiny() -> torch.nn.Module:
    torch.manual_seed(5)
    return Tiny().eval()


def image_config(optimization: dict[str, object] | None = None) -> str:
    return f"""
max_batch_size = 8
[[input]]
name = "image"
datatype = "BYTES"
shape = [1]
[input.image]                # the [[input]] above takes encoded images
format = "jpeg"
resize = {IMAGE['resize']}
crop = {IMAGE['crop']}
mean = {IMAGE['mean']}
std = {IMAGE['std']}
[[output]]
name = "scores"
datatype = "FP32"
shape = [3]
""" + ("[optimization]\n" + "".join(f"{k} = {v}\n" for k, v in optimization.items()) if optimization else "")


def save_tiny(folder: Path, optimization: dict[str, object] | None = None) -> Path:
    (folder / "1").mkdir(parents=True)
    torch.jit.script(tiny()).save(str(folder / "1/model.pt"))
    (folder / "config.toml").write_text(image_config(optimization))
    return folder


def expected(blobs: list[bytes]) -> np.ndarray:
    image = ImageInput("jpeg", 40, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    with torch.no_grad():
        return tiny()(torch.from_numpy(np.stack([pil_array(b, image) for b in blobs]))).numpy()  # type: ignore[no-any-return]


def runtime_for(folder: Path) -> TorchRuntime:
    import tomllib

    config = parse_model_config(tomllib.loads((folder / "config.toml").read_text()), "config.toml")
    return load(LoadContext(name="tiny", version="1", artifact=folder / "1/model.pt", config=config))


def rows(blobs: list[bytes]) -> np.ndarray:
    array = np.empty((len(blobs), 1), dtype=object)
    array[:, 0] = blobs
    return array


@pytest.mark.parametrize("optimization", [None, {"batch_sizes": [4, 8], "warmup": "true"}])
def test_a_model_takes_jpeg_bytes_and_answers_like_the_model_on_decoded_images(
        tmp_path: Path, optimization: dict[str, object] | None) -> None:
    runtime = runtime_for(save_tiny(tmp_path / "tiny", optimization))
    runtime.warmup()
    blobs = [jpeg(60, 80, 1), jpeg(90, 50, 2), jpeg(32, 32, 3)]
    scores = runtime.infer({"image": rows(blobs)})["scores"]
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected(blobs), rtol=1e-5, atol=1e-6)
    assert [spec.datatype for spec in runtime.inputs] == ["BYTES"]


def test_what_is_not_a_jpeg_is_invalid_input_naming_the_row(tmp_path: Path) -> None:
    runtime = runtime_for(save_tiny(tmp_path / "tiny"))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(InvalidInput, match=r"input 'image': row 1 is not a JPEG image \(expected bytes starting "
                                           r"FF D8 FF, got 89 50 4e 47"):
        runtime.infer({"image": rows([jpeg(40, 40, 1), png.getvalue()])})


@pytest.mark.parametrize(("text", "message"), [
    ('[[output]]\nname = "y"\ndatatype = "BYTES"\nshape = [1]\nimage = {}', "is for inputs"),
    ('[[input]]\nname = "x"\ndatatype = "FP32"\nshape = [1]\nimage = {}', 'datatype "BYTES" and shape \\[1\\]'),
    ('[[input]]\nname = "x"\ndatatype = "BYTES"\nshape = [1]\nimage = {}', "needs max_batch_size > 0"),
    ('max_batch_size = 2\n[[input]]\nname = "x"\ndatatype = "BYTES"\nshape = [1]\nimage = { format = "png" }',
     "'format' must be one of"),
    ('max_batch_size = 2\n[[input]]\nname = "x"\ndatatype = "BYTES"\nshape = [1]\nimage = { crop = 300 }',
     "'crop' must not exceed resize"),
    ('max_batch_size = 2\n[[input]]\nname = "x"\ndatatype = "BYTES"\nshape = [1]\nimage = { std = [1, 0, 1] }',
     "'std' must be three numbers > 0"),
    ('max_batch_size = 2\n[[input]]\nname = "x"\ndatatype = "BYTES"\nshape = [1]\nimage = { mean = [1] }',
     "'mean' must be three numbers"),
])
def test_image_tables_are_checked(text: str, message: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse_model_config(tomllib.loads(text), "config.toml")
