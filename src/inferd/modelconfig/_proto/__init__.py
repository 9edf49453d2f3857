"""Generated protobuf messages (scripts/gen_protos.sh from protos/triton_model_config.proto). Do not edit."""
