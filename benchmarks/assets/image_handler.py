"""An image-classification handler written for TorchServe (PIL + numpy, no torchvision), served
unchanged by TorchServe 0.12 and by inferd in benchmarks/torchserve_images.py."""

import io

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageHandler(BaseHandler):
    def preprocess(self, data):
        images = []
        for row in data:
            image = Image.open(io.BytesIO(row.get("data") or row.get("body"))).convert("RGB")
            w, h = image.size
            size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
            image = image.resize(size, Image.BILINEAR)
            left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
            pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
            images.append(((pixels - MEAN) / STD).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(images))

    def postprocess(self, data):
        probs, classes = torch.topk(torch.softmax(data, dim=1), 5, dim=1)
        return [{str(c): p for c, p in zip(cs, ps, strict=True)}
                for cs, ps in zip(classes.tolist(), probs.tolist(), strict=True)]
