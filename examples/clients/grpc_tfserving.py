"""TensorFlow Serving's gRPC API with its own stubs: Predict on mlp_tf's two signatures (the second by
its version label), and Classify on half_plus_two.

    python examples/clients/grpc_tfserving.py [HOST:PORT]     # default localhost:8001

Needs ``pip install tensorflow-serving-api`` (which brings TensorFlow for ``make_tensor_proto``).
"""

from __future__ import annotations

import sys

import grpc
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc


def main(url: str) -> None:
    with grpc.insecure_channel(url) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mlp_tf"  # the default signature, the newest version
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0, 4.0]], dtype=tf.float32))
        answer = stub.Predict(request, timeout=10)
        print("y:", tf.make_ndarray(answer.outputs["y"]))

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mlp_tf"
        request.model_spec.version_label = "stable"
        request.model_spec.signature_name = "add"
        request.inputs["a"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
        request.inputs["b"].CopyFrom(tf.make_tensor_proto([10.0, 20.0], dtype=tf.float32))
        answer = stub.Predict(request, timeout=10)
        print("sum:", tf.make_ndarray(answer.outputs["sum"]))

        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name = "half_plus_two"
        classify.model_spec.signature_name = "classify_x_to_y"
        classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
        result = stub.Classify(classify, timeout=10).result
        print("score:", result.classifications[0].classes[0].score)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:8001")
