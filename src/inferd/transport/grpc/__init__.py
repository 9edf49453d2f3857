"""The gRPC transport (grpc.aio): KServe v2 and TensorFlow Serving services on one port."""
