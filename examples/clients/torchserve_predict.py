"""TorchServe's inference API with requests: health, then examples/kitten.jpg to the tiny_cnn archive.

    python examples/clients/torchserve_predict.py [BASE_URL]   # default http://localhost:8000

Serve the archive first: ``inferd serve examples/models --model-store examples/model_store --models all``.
Needs ``pip install requests``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import requests

IMAGE = Path(__file__).resolve().parents[1] / "kitten.jpg"


def main(base: str) -> None:
    print(requests.get(f"{base}/ping", timeout=10).json())
    answer = requests.post(f"{base}/predictions/tiny_cnn", data=IMAGE.read_bytes(), timeout=30)
    answer.raise_for_status()
    print(answer.json())  # the five most likely labels (the model is untrained: any five)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000")
