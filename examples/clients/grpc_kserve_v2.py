"""KServe v2 over gRPC with Triton's client: metadata, then one inference on mlp_onnx.

    python examples/clients/grpc_kserve_v2.py [HOST:PORT]     # default localhost:8001

Needs ``pip install 'tritonclient[grpc]'``.
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.grpc as triton


def main(url: str) -> None:
    client = triton.InferenceServerClient(url)
    print("server ready:", client.is_server_ready())
    metadata = client.get_model_metadata("mlp_onnx", as_json=True)
    print("inputs:", [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]])
    x = triton.InferInput("x", [2, 16], "FP32")
    x.set_data_from_numpy(np.arange(32, dtype=np.float32).reshape(2, 16))
    answer = client.infer("mlp_onnx", [x], outputs=[triton.InferRequestedOutput("y")])
    print("y:", answer.as_numpy("y"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:8001")
