"""The gRPC side of `inferd bench`: ModelInfer requests built once, sent as bytes by grpc.aio."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from inferd.bench.inputs import concrete_shape, sample
from inferd.bench.loadgen import LoadResult
from inferd.protocols import tensors
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.protocols.kserve_v2_grpc import CONTENTS_FIELD

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str, version: str | None, metadata: dict[str, Any], raw: bool, batch: int = 1,
                  files: dict[str, bytes] | None = None, classification: int = 0) -> bytes:
    """A serialized ModelInferRequest: typed contents, or raw_input_contents with ``raw``; ``files``
    and ``classification`` as for HTTP (``inputs.request_body``)."""
    rng = np.random.default_rng(0)
    message = pb.ModelInferRequest(model_name=model, model_version=version or "")
    for spec in metadata["inputs"]:
        shape = concrete_shape(spec["shape"], batch)
        data = sample(spec["datatype"], shape, rng, (files or {}).get(spec["name"]))
        tensor = message.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=shape)
        field = CONTENTS_FIELD.get(spec["datatype"])
        if raw or field is None:
            message.raw_input_contents.append(tensors.to_raw(data, spec["datatype"]))
        else:
            getattr(tensor.contents, field).extend(data.reshape(-1).tolist())
    if classification:
        for spec in metadata["outputs"]:
            message.outputs.add(name=spec["name"]).parameters["classification"].int64_param = classification
    return message.SerializeToString()


async def run_grpc_load(target: str, request: bytes, concurrency: int, seconds: float,
                        counter: list[int] | None = None) -> LoadResult:
    import grpc

    result, counter = LoadResult(), counter if counter is not None else [0]
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        # bytes in, bytes out: no client-side (de)serialisation
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter_ns()
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    result.fail(f"gRPC {exc.code().name}", exc.details() or "")
                else:
                    result.latencies_ns.append(time.perf_counter_ns() - sent)
                counter[0] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result
