#!/usr/bin/env bash
# Regenerate the protobuf message modules from protos/*.proto: the wire protocols' messages in
# src/inferd/protocols/_proto, Triton's model configuration in src/inferd/modelconfig/_proto, TF
# Serving's deployment files' in src/inferd/compat/_proto. The generated files are committed (CI and
# users need no protoc); rerun this after editing a .proto.
#
# The generator is pinned: grpcio-tools 1.63.2 bundles protoc 26.1, whose code runs on every protobuf
# runtime from 5.26.1 on (the runtime only refuses gencode newer than itself), so inferd installs
# beside clients that pin protobuf 5.x or 6.x (tritonclient, kserve) as well as with 7.x. Run it from
# a venv that has that version: python3 -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.63.2
# && PYTHON=/tmp/gen/bin/python scripts/gen_protos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
want="libprotoc 26.1"
have="$("$PYTHON" -m grpc_tools.protoc --version)"
if [ "$have" != "$want" ]; then
  echo "gen_protos.sh: needs $want (grpcio-tools==1.63.2), found '$have'; see the comment at the top" >&2
  exit 1
fi
"$PYTHON" -m grpc_tools.protoc -I protos --python_out=src/inferd/protocols/_proto --pyi_out=src/inferd/protocols/_proto \
  protos/kserve_v2.proto protos/tfserving.proto protos/torchserve.proto
"$PYTHON" -m grpc_tools.protoc -I protos --python_out=src/inferd/modelconfig/_proto \
  --pyi_out=src/inferd/modelconfig/_proto protos/triton_model_config.proto
"$PYTHON" -m grpc_tools.protoc -I protos --python_out=src/inferd/compat/_proto --pyi_out=src/inferd/compat/_proto \
  protos/tfserving_config.proto
# The message classes' __module__ is protoc's short name ('kserve_v2_pb2') unless the proto sits at
# the package path; give them their importable name, so pickling a message (Ray Serve's gRPC proxy
# hands them to replicas by pickle) finds its class again.
for generated in src/inferd/protocols/_proto/*_pb2.py src/inferd/modelconfig/_proto/*_pb2.py \
                 src/inferd/compat/_proto/*_pb2.py; do
  short="$(basename "$generated" .py)"
  package="$(dirname "${generated#src/}" | tr / .)"
  sed -i "s/BuildTopDescriptorsAndMessages(DESCRIPTOR, '$short', _globals)/BuildTopDescriptorsAndMessages(DESCRIPTOR, '$package.$short', _globals)/" "$generated"
done
