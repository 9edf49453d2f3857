"""Triton's model configuration (its ``ModelConfig`` message) and inferd's ModelConfig, both ways.

A Triton repository's ``config.pbtxt`` is that message in protobuf text format, a load override
(``parameters.config``) is it in JSON, and the model configuration extension answers with it. The
message is ours (``protos/triton_model_config.proto``, Triton's field numbers and names, only the
keys inferd serves), so protobuf's own text_format and json_format do the parsing, and a key
inferd does not serve is an error that names it.
"""

from inferd.config import ServedConfig
from inferd.modelconfig.convert import (
    PBTXT,
    apply_override,
    model_config_json,
    model_config_message,
    parse_pbtxt,
    read_pbtxt,
)

__all__ = ["PBTXT", "ServedConfig", "apply_override", "model_config_json", "model_config_message",
           "parse_pbtxt", "read_pbtxt"]
