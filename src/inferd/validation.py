"""Checking a request against the model's metadata, once per request, with numpy only."""

from __future__ import annotations

import numpy as np

from inferd.errors import InvalidInput
from inferd.runtimes.base import Arrays, Runtime
from inferd.types import InferRequest, RequestedOutput, SequenceId, TensorSpec

_UINT64_MAX = 2**64 - 1


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _expected(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"'{s.name}' ({s.datatype} {_shape(s.shape)}{', optional' if s.optional else ''})" for s in specs)


def check_inputs(request: InferRequest, runtime: Runtime) -> Arrays:
    """The request's inputs as named arrays, after every check the model's metadata allows."""
    specs = {spec.name: spec for spec in runtime.inputs}
    given: Arrays = {}
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            supplied = runtime.supplied_inputs.get(tensor.name)
            if supplied is not None:
                raise InvalidInput(f"input '{tensor.name}' of model '{request.model_name}' is {supplied}, which "
                                   f"the server supplies: do not send it; the model takes {_expected(runtime.inputs)}")
            raise InvalidInput(f"unknown input '{tensor.name}' for model '{request.model_name}'; "
                               f"it takes {_expected(runtime.inputs)}")
        if tensor.name in given:
            raise InvalidInput(f"input '{tensor.name}' already exists in request")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(f"input '{tensor.name}': expected datatype {spec.datatype}, "
                               f"got {tensor.datatype}")
        _check_shape(tensor.name, tensor.data, spec, runtime)
        given[tensor.name] = tensor.data
    if len(given) < len(specs):  # (all given: nothing to look for, on every request)
        missing = [name for name, spec in specs.items() if name not in given and not spec.optional]
        if missing:
            raise InvalidInput(_missing_inputs(request.model_name, runtime.inputs, given, missing))
    if runtime.max_batch_size > 0 and len(given) > 1:  # (one input agrees with itself)
        _check_same_batch(given)
    return given


def _missing_inputs(model: str, specs: tuple[TensorSpec, ...], given: Arrays, missing: list[str]) -> str:
    """Triton's words for a request short of required inputs, then what the model takes."""
    required = sum(1 for spec in specs if not spec.optional)
    expected = (f"{required} inputs" if required == len(specs)
                else f"number of inputs between {required} and {len(specs)}")
    got = ",".join(f"'{name}'" for name in sorted(given))
    lacking = ",".join(f"'{name}'" for name in sorted(missing))
    return (f"expected {expected} but got {len(given)} inputs for model '{model}'. Got input(s) [{got}], "
            f"but missing required input(s) [{lacking}]. Please provide all required input(s). "
            f"The model takes {_expected(specs)}")


def _check_shape(name: str, data: np.ndarray, spec: TensorSpec, runtime: Runtime) -> None:
    """Known dims are checked. TensorFlow's rules on top: an unknown rank takes any shape, and
    (without batching) a tensor of another rank goes to the graph, which decides what it takes."""
    shape, max_batch_size = data.shape, runtime.max_batch_size
    if not spec.rank_known and max_batch_size == 0:
        return
    if runtime.lenient_rank and max_batch_size == 0 and len(shape) != len(spec.shape):
        return
    ok = len(shape) == len(spec.shape) and all(
        want == -1 or want == got for want, got in zip(spec.shape, shape, strict=True))
    if not ok:
        raise InvalidInput(f"input '{name}': expected shape {_shape(spec.shape)} (-1 = any size), "
                           f"got {_shape(shape)}")
    if max_batch_size > 0 and not 1 <= shape[0] <= max_batch_size:
        raise InvalidInput(f"input '{name}': batch size {shape[0]} is outside 1..{max_batch_size} "
                           "(the model's max_batch_size)")


def _check_same_batch(given: Arrays) -> None:
    sizes = {name: array.shape[0] for name, array in given.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInput(f"inputs disagree on the batch size (dim 0): {sizes}")


def check_outputs(request: InferRequest, runtime: Runtime) -> list[RequestedOutput]:
    """The outputs to return, in order: the requested ones, or all of them."""
    if request.outputs is None:
        return [RequestedOutput(spec.name) for spec in runtime.outputs]
    names = {spec.name for spec in runtime.outputs}
    seen: set[str] = set()
    for wanted in request.outputs:
        if wanted.name in seen:  # Triton's words; the answer could not hold both
            raise InvalidInput(f"output '{wanted.name}' already exists in request")
        seen.add(wanted.name)
        if wanted.name not in names:
            raise InvalidInput(f"unexpected inference output '{wanted.name}' for model '{request.model_name}'; "
                               f"it gives {_expected(runtime.outputs)}")
    return request.outputs


def sequence_of(parameters: dict[str, object]) -> SequenceId | None:
    """The request's sequence from its ``sequence_id``/``sequence_start``/``sequence_end``
    parameters (as tritonclient sends them over HTTP and gRPC), or None when it names none."""
    if "sequence_id" not in parameters and "sequence_start" not in parameters and "sequence_end" not in parameters:
        return None
    sequence_id = parameters.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str) or (
            isinstance(sequence_id, int) and not 0 <= sequence_id <= _UINT64_MAX):
        raise InvalidInput(f"parameters.sequence_id must be an unsigned 64-bit integer or a string, "
                           f"got {sequence_id!r}")
    flags = {}
    for name in ("sequence_start", "sequence_end"):
        value = parameters.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameters.{name} must be true or false, got {value!r}")
        flags[name] = value
    return SequenceId(sequence_id, flags["sequence_start"], flags["sequence_end"])
