"""Generated protobuf messages (scripts/gen_protos.sh from protos/tfserving_config.proto). Do not edit."""
