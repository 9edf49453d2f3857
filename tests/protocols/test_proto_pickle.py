"""Generated messages pickle by their importable module name (Ray Serve's gRPC proxy pickles the
requests it hands to replicas; protoc's short module names would not import there)."""

from __future__ import annotations

import pickle

import pytest

from inferd.compat._proto import tfserving_config_pb2
from inferd.modelconfig._proto import triton_model_config_pb2
from inferd.protocols._proto import kserve_v2_pb2, tfserving_pb2


@pytest.mark.parametrize("module", [kserve_v2_pb2, tfserving_pb2, triton_model_config_pb2, tfserving_config_pb2])
def test_every_message_pickles_by_its_module(module: object) -> None:
    names = list(module.DESCRIPTOR.message_types_by_name)  # type: ignore[attr-defined]
    assert names
    for name in names:
        cls = getattr(module, name)
        assert cls.__module__ == module.__name__  # type: ignore[attr-defined]
        message = cls()
        assert pickle.loads(pickle.dumps(message)) == message


def test_a_filled_infer_request_survives_pickling() -> None:
    request = kserve_v2_pb2.ModelInferRequest(model_name="mlp", id="7", raw_input_contents=[b"\x00\x01"])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    assert pickle.loads(pickle.dumps(request)) == request
