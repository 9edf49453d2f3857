#!/usr/bin/env bash
# Regenerate the protobuf message modules from protos/*.proto: the wire protocols' messages in
# src/inferd/protocols/_proto, TF Serving's deployment files' in src/inferd/compat/_proto.
# The generated files are committed (CI and users need no protoc); rerun this after editing a .proto.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m grpc_tools.protoc -I protos --python_out=src/inferd/protocols/_proto --pyi_out=src/inferd/protocols/_proto \
  protos/kserve_v2.proto protos/tfserving.proto
python3 -m grpc_tools.protoc -I protos --python_out=src/inferd/compat/_proto --pyi_out=src/inferd/compat/_proto \
  protos/tfserving_config.proto
