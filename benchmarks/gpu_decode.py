"""The GPU image path in parts (issue 17): how far nvjpeg's decode is from Pillow's, and where a
batch's time goes (decode; resize one frame at a time against one call per frame size).

    python benchmarks/gpu_decode.py [--out results/gpu_decode.json]     # needs a CUDA GPU, torchvision

Differences are in 8-bit levels (uint8 frames) and in levels of the normalised crops the model
takes (one level = 1/255/std). Two image sets: the suite's test JPEGs (random 8-pixel blocks,
bicubic, the worst case for chroma subsampling) and gpu_resnet.py's (16-pixel blocks, 640×480).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.runtimes.test_torch_image's JPEGs

from gpu_resnet import jpegs  # noqa: E402

from inferd.config import ImageInput  # noqa: E402
from inferd.runtimes.torch_image import pil_array, resize_crop_normalize  # noqa: E402
from tests.runtimes.test_torch_image import jpeg  # noqa: E402

LEVEL = 1 / 255 / 0.224


def differences(blobs: list[bytes], device: torch.device) -> dict:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    on_gpu = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    on_cpu = [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
    pillow = [torch.from_numpy(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).transpose(2, 0, 1).copy())
              for b in blobs]
    image = ImageInput()
    reference = np.stack([pil_array(b, image) for b in blobs])

    def levels(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
        d = np.concatenate([(x.cpu().float() - y.cpu().float()).abs().numpy().ravel()
                            for x, y in zip(a, b, strict=True)])
        return {"mean": float(d.mean()), "max": float(d.max()), "p99": float(np.percentile(d, 99))}

    def crops(frames: list[torch.Tensor]) -> dict:
        got = resize_crop_normalize(torch, [f.to(device) for f in frames], image, device).cpu().numpy()
        d = np.abs(got - reference) / LEVEL
        return {"mean": float(d.mean()), "max": float(d.max()), "p99": float(np.percentile(d, 99))}

    return {"frames_nvjpeg_vs_pillow": levels(list(on_gpu), pillow),
            "frames_torchvision_cpu_vs_pillow": levels(on_cpu, pillow),
            "crops_nvjpeg_then_gpu_resize_vs_pillow": crops(list(on_gpu)),
            "crops_pillow_frames_gpu_resize_vs_pillow": crops(pillow)}


def timed(call: Callable[[], object], device: torch.device, seconds: float = 1.0) -> float:
    """ms per call."""
    for _ in range(3):
        call()
    torch.cuda.synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        runs += 1
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / runs * 1000


def timings(blobs: list[bytes], device: torch.device) -> dict:
    from torchvision.io import ImageReadMode, decode_jpeg

    image = ImageInput()
    rows = {}
    for count in (1, 64, 256):
        batch = (blobs * (count // len(blobs) + 1))[:count]
        data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in batch]
        frames = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        rows[count] = {
            "frombuffer_ms": timed(lambda b=batch: [torch.frombuffer(bytearray(x), dtype=torch.uint8) for x in b],
                                   device),
            "decode_ms": timed(lambda d=data: decode_jpeg(d, mode=ImageReadMode.RGB, device=device), device),
            "resize_per_frame_ms": timed(lambda f=frames: [resize_crop_normalize(torch, [x], image, device) for x in f],
                                         device),
            "resize_per_size_ms": timed(lambda f=frames: resize_crop_normalize(torch, list(f), image, device), device),
        }
        print(count, {key: round(value, 3) for key, value in rows[count].items()}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_decode.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_decode.py: no CUDA device")
    device = torch.device("cuda:0")
    tests = [jpeg(480, 640, 4), jpeg(256, 300, 5), jpeg(480, 640, 1), jpeg(300, 200, 2)]
    bench = jpegs((480, 640))
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "differences_test_images": differences(tests, device),
              "differences_bench_images": differences(bench, device)}
    print(json.dumps(result, indent=1), flush=True)
    result["timings_640x480"] = timings(bench, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
