"""Encoded images to the float tensors a vision model takes: N×3×crop×crop, normalised.

On a GPU, JPEGs are decoded there in one batched call (nvjpeg, through
``torchvision.io.decode_jpeg(..., device="cuda")``) and resized, cropped and normalised there, so
only the compressed bytes cross PCIe. On the CPU, Pillow decodes and resizes (what the built-in
image classifier has always done). Both compute torchvision's ``Resize(resize)``,
``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean, std)``. Imported by the torch runtime and
the built-in handlers only; torch is handed in, torchvision and Pillow are imported when used.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from inferd.config import ImageInput
from inferd.errors import ConfigError, InvalidInput

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(blob: bytes | bytearray) -> bool:
    return bytes(blob[:3]) == JPEG_MAGIC


def require_gpu_decoder(name: str) -> None:
    """torchvision's nvjpeg decoder, or a load error saying how to get it."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        raise ConfigError(f"model '{name}': decoding JPEG on the GPU needs torchvision built for the installed "
                          f"torch (pip install torchvision matching torch {_torch_version()}): {exc}") from None


def gpu_decoder_available() -> bool:
    try:
        require_gpu_decoder("")
    except ConfigError:
        return False
    return True


def decode_batch(torch: Any, blobs: Sequence[Any], image: ImageInput, device: Any, what: str) -> Any:
    """``blobs`` (JPEG bytes, one per image) as a float32 N×3×crop×crop tensor on ``device``."""
    for row, blob in enumerate(blobs):
        if not is_jpeg(blob):
            raise InvalidInput(f"{what}: row {row} is not a JPEG image (expected bytes starting FF D8 FF, "
                               f"got {bytes(blob[:8]).hex(' ') or 'nothing'})")
    if device.type == "cuda":
        return resize_crop_normalize(torch, _decode_on_gpu(torch, blobs, device, what), image, device)
    return torch.from_numpy(np.stack([pil_array(blob, image, what) for blob in blobs]))


def _decode_on_gpu(torch: Any, blobs: Sequence[Any], device: Any, what: str) -> list[Any]:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        frames = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        raise InvalidInput(f"{what}: a JPEG image did not decode: {str(exc).splitlines()[0]}") from None
    return list(frames) if isinstance(frames, list | tuple) else [frames]


def resize_crop_normalize(torch: Any, frames: Sequence[Any], image: ImageInput, device: Any) -> Any:
    """uint8 3×H×W frames (any sizes, on ``device``) -> float32 N×3×crop×crop, on that device.
    Frames of one size are resized together (one interpolation per size, not per frame: on a GPU
    each call is a few kernel launches, and a batch of 256 camera frames is usually one size)."""
    crop = image.crop
    out = torch.empty((len(frames), 3, crop, crop), dtype=torch.float32, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, frame in enumerate(frames):
        by_size.setdefault((int(frame.shape[-2]), int(frame.shape[-1])), []).append(index)
    for (height, width), indices in by_size.items():
        new_h, new_w = resize_to(height, width, image.resize)
        group = torch.stack([frames[i] for i in indices]) if len(indices) > 1 else frames[indices[0]][None]
        resized = torch.nn.functional.interpolate(group.float(), size=(new_h, new_w), mode="bilinear",
                                                  antialias=True, align_corners=False)
        top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
        cropped = resized[:, :, top:top + crop, left:left + crop]
        if len(indices) == len(frames):
            out.copy_(cropped)
        else:
            out[torch.tensor(indices, device=device)] = cropped
    mean = torch.tensor(image.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(image.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    return out.clamp_(0.0, 255.0).sub_(mean).div_(std)


def resize_to(height: int, width: int, shorter: int) -> tuple[int, int]:
    """The shorter side to ``shorter``, the other in proportion (rounded down, as torchvision)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def pil_array(raw: bytes, image: ImageInput, what: str = "the request") -> np.ndarray:
    """Pillow's decode, bilinear resize and centre crop, then [0, 1] and mean/std: float32 3×crop×crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(raw)).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"{what}: not an image Pillow can read: {exc}") from None
    return pil_pipeline(opened, image)


def pil_pipeline(opened: Any, image: ImageInput) -> np.ndarray:
    from PIL import Image

    opened = opened.convert("RGB")
    width, height = opened.size
    new_h, new_w = resize_to(height, width, image.resize)
    opened = opened.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - image.crop) / 2.0), round((new_h - image.crop) / 2.0)
    opened = opened.crop((left, top, left + image.crop, top + image.crop))
    pixels = np.asarray(opened, dtype=np.float32) / 255.0
    mean = np.asarray(image.mean, dtype=np.float32)
    std = np.asarray(image.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1).copy()


def black_jpeg(size: int) -> bytes:
    """A small valid JPEG (for warm-up: the decoder runs too)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _torch_version() -> str:
    try:
        import torch

        return str(torch.__version__)
    except ImportError:
        return "(not installed)"
