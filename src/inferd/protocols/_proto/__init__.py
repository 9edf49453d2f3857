"""Generated protobuf messages (scripts/gen_protos.sh from protos/*.proto). Do not edit."""
