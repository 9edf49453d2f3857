"""KServe's own SDK clients (InferenceRESTClient, InferenceGRPCClient, protocol v2) against the real
server: health (which parses the bodies), model readiness, JSON, binary and gRPC inference.

The clients run in a subprocess: kserve's generated messages and tritonclient's (which other test
modules import) both declare the proto package ``inference``, and protobuf refuses the second in one
process. inferd's own messages live in their own packages and load beside either."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import models
from tests.conftest import RunningServer, serve

pytestmark = pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                                reason="kserve is a dev dependency; not installed here")

CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    import numpy as np
    import kserve

    base, grpc_url = sys.argv[1], sys.argv[2]
    x = np.array(json.loads(sys.argv[3]), dtype=np.float32)

    def request(binary):
        tensor = kserve.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        return kserve.InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="k1")

    async def main():
        rest = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0))
        grpc = kserve.InferenceGRPCClient(grpc_url, retries=2)
        try:
            states = [await rest.is_server_live(base), await rest.is_server_ready(base),
                      await rest.is_model_ready(base, "mlp"), await rest.is_model_ready(base, "nope"),
                      await grpc.is_server_live(), await grpc.is_server_ready(), await grpc.is_model_ready("mlp")]
            answers = [await rest.infer(base, request(False), model_name="mlp"),
                       await rest.infer(base, request(True), model_name="mlp"),
                       await grpc.infer(request(True))]
        finally:
            await rest.close()
            await grpc.close()
        return {"states": states, "ids": [a.id for a in answers],
                "outputs": [a.outputs[0].as_numpy().tolist() for a in answers]}

    print(json.dumps(asyncio.run(main())))
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("kserve_sdk")
    (root / "mlp/1").mkdir(parents=True)
    torch.onnx.export(models.mlp(), (torch.randn(2, 8),), str(root / "mlp/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    models.write(root / "mlp/config.toml", "max_batch_size = 16\n")
    with serve(root, grpc=True) as running:
        yield running


def test_kserve_rest_and_grpc_clients(server: RunningServer) -> None:
    x = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
    done = subprocess.run([sys.executable, "-c", CLIENT, server.base, server.grpc_url, json.dumps(x.tolist())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["states"] == [True, True, True, False, True, True, True]
    assert result["ids"][:2] == ["k1", "k1"]
    for output in result["outputs"]:  # JSON, binary and gRPC answers all equal the model run here
        np.testing.assert_allclose(np.array(output), models.run_mlp(x), rtol=1e-5, atol=1e-5)
