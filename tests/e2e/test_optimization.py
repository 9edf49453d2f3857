"""[optimization] through the real server: a bf16, channels-last, padded and warmed-up TorchScript
CNN answers v2 binary requests (batched by the dynamic batcher) within bf16's tolerance of the model
in-process, and says how it runs in its ready line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from tests.conftest import serve
from tests.runtimes.test_torch_optimization import BF16_ATOL, cnn, expected, images, save

CONFIG = """
max_batch_size = 8
[dynamic_batching]
max_queue_delay_ms = 2
[[input]]
name = "x"
datatype = "FP32"
shape = [3, 16, 16]
[[output]]
name = "y"
datatype = "FP32"
shape = [5]
[optimization]
precision = "bf16"
channels_last = true
batch_sizes = [4, 8]
warmup = true
"""


def test_a_bf16_channels_last_model_serves_binary_v2_close_to_the_model(tmp_path: Path) -> None:
    save(tmp_path / "cnn/1", cnn())
    (tmp_path / "cnn/1/model.pt2").unlink()
    (tmp_path / "cnn/config.toml").write_text(CONFIG)
    with serve(tmp_path) as server:
        ready = r"cnn version 1 ready in [0-9.]+ s \(pytorch_libtorch on cpu, bf16, channels_last"
        assert re.search(ready, server.log())
        client = httpclient.InferenceServerClient(server.base.removeprefix("http://"), concurrency=8)

        sent = []
        for rows in [1, 2, 3, 5, 7, 1, 4, 6] * 2:  # in flight together: the batcher joins them
            x = images(rows, seed=rows)
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            sent.append((x, client.async_infer("cnn", [tensor],
                                               outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])))
        for x, handle in sent:
            y = handle.get_result().as_numpy("y")
            assert y.dtype == np.float32 and y.shape == (len(x), 5)
            np.testing.assert_allclose(y, expected(x), atol=BF16_ATOL)
        client.close()
