"""How a torch module runs when ``[optimization]`` asks for more than eager calls, or when it sits on a
GPU: precision, memory format, ``torch.compile`` or CUDA graphs per batch size (a batch padded up to
the nearest), warm-up at load, and device staging.

Each instance owns a *lane*: on CUDA its own stream, its pinned host buffers (inputs are written
there and copied to the device without blocking) and its captured graphs; a call takes a free lane
and gives it back, so instances never share a buffer or a graph. Outputs of a batch come back to
the host together, with one synchronisation of the lane's stream. Imported by ``runtimes/torch.py``
only (it is the torch runtime's own module); torch is handed in, never imported at module level.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.config import ImageInput, Optimization, capture_sizes
from inferd.errors import ConfigError, ModelError
from inferd.runtimes.base import Arrays, warmup_inputs
from inferd.runtimes.padding import chunks, pad_rows
from inferd.runtimes.torch_image import black_jpeg, decode_batch, require_gpu_decoder
from inferd.types import TensorSpec

_FLOAT_INPUTS = ("FP16", "FP32", "FP64", "BF16")


@dataclass
class Staging:
    """A pinned host buffer for one input, grown to the largest batch seen, and the event recorded
    after the last copy out of it (the buffer is rewritten only once that copy is done)."""

    buffer: Any  # uint8, pinned
    copied: Any  # torch.cuda.Event
    used: bool = False


@dataclass
class Lane:
    """One instance's own state: what no two concurrent calls may share."""

    stream: Any = None  # torch.cuda.Stream on CUDA, else None
    pinned: dict[str, Staging] = field(default_factory=dict)  # by input name
    graphs: dict[int, tuple[Any, list[Any], Any]] = field(default_factory=dict)  # rows -> graph, ins, outs
    pool: Any = None  # the memory pool this lane's graphs share (they never replay at once)


class Executor:
    """Runs ``forward`` on ``device`` as the optimization says; ``run`` takes numpy, gives tensors."""

    def __init__(self, torch: Any, module: Any, device: Any,
                 inputs: tuple[TensorSpec, ...], optimization: Optimization, max_batch_size: int,
                 name: str, platform: str, images: dict[str, ImageInput] | None = None) -> None:
        self._torch = torch
        self._images = images or {}
        self._device = device
        self._cuda = device.type == "cuda"
        self._inputs = inputs
        self._opt = optimization
        self._name = name
        self._max_batch_size = max_batch_size
        _refuse(optimization, self._cuda, platform, name)
        if self._images and self._cuda:
            require_gpu_decoder(name)
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(optimization.precision)
        if self._dtype is not None:
            module = module.to(self._dtype)
        if optimization.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._sizes = capture_sizes(optimization, max_batch_size) if optimization.compile \
            else optimization.batch_sizes
        self._forward: Callable[..., Any] = module.forward  # skips nn.Module.__call__'s hooks
        if optimization.compile == "torch_compile":
            limit = torch._dynamo.config.recompile_limit  # one graph per batch size, or dynamo falls back
            torch._dynamo.config.recompile_limit = max(limit, 2 * len(self._sizes) + 8)
            self._forward = torch.compile(module, dynamic=False)
        self._lanes: queue.SimpleQueue[Lane] = queue.SimpleQueue()
        self._lane_count = 0
        self._lock = threading.Lock()

    # --- lanes -----------------------------------------------------------------------------

    def add_lanes(self, count: int) -> None:
        """Have ``count`` lanes (more are never retired: a lane holds only caches)."""
        with self._lock:
            while self._lane_count < count:
                self._lanes.put(self._new_lane())
                self._lane_count += 1

    def _new_lane(self) -> Lane:
        torch = self._torch
        if not self._cuda:
            return Lane()
        return Lane(stream=torch.cuda.Stream(self._device), pool=torch.cuda.graph_pool_handle())

    def warm_up(self) -> None:
        """Run zeros through every batch size on every lane: compiles, captures CUDA graphs, fills
        the allocator's caches and the pinned buffers before the first request."""
        if not (self._opt.warmup or self._opt.compile):
            return
        sizes = self._sizes or ((1, self._max_batch_size) if self._max_batch_size > 1 else (1,))
        lanes = [self._lanes.get() for _ in range(self._lane_count)]
        try:
            for lane in lanes:
                for size in dict.fromkeys(sizes):
                    rows = size if self._max_batch_size else 0
                    self._call(lane, self._warmup_inputs(rows), rows)
        finally:
            for lane in lanes:
                self._lanes.put(lane)

    def _warmup_inputs(self, rows: int) -> Arrays:
        arrays = warmup_inputs(tuple(s for s in self._inputs if s.name not in self._images), rows, self._name)
        for name, image in self._images.items():
            blob = black_jpeg(image.crop)
            arrays[name] = np.array([[blob]] * rows, dtype=object).reshape(rows, 1)
        return arrays

    # --- calls -----------------------------------------------------------------------------

    def run(self, inputs: Arrays) -> list[Any]:
        """The model's outputs for ``inputs``, as host tensors in its own structure (a tensor, a
        tuple, a dict), cast back from the working precision."""
        rows = next(iter(inputs.values())).shape[0] if self._max_batch_size and inputs else 0
        lane = self._lanes.get()
        try:
            return self._call(lane, inputs, rows)
        except self._torch.OutOfMemoryError as exc:
            if self._cuda:
                self._torch.cuda.empty_cache()  # what the failed batch cached goes back; the lane stays usable
            raise ModelError(f"model '{self._name}' ran out of memory on {self._device} running a batch of "
                             f"{rows} rows; retry, or lower max_batch_size: {str(exc).splitlines()[0]}") from None
        finally:
            self._lanes.put(lane)

    def _call(self, lane: Lane, inputs: Arrays, rows: int) -> list[Any]:
        torch = self._torch
        pieces = chunks(rows, self._sizes) if self._sizes and self._max_batch_size else [(0, rows, rows)]
        results = []
        stream = torch.cuda.stream(lane.stream) if lane.stream is not None else _nothing()
        with stream:
            for start, stop, padded in pieces:
                args = [self._stage(lane, _rows(inputs[spec.name], start, stop, self._max_batch_size), spec,
                                    padded) for spec in self._inputs]
                result = self._execute(lane, args, padded)
                results.append(_map(result, functools.partial(self._to_host, rows=stop - start, padded=padded)))
            if lane.stream is not None:
                lane.stream.synchronize()  # every output of the batch is on the host now: one wait
        return results

    def _stage(self, lane: Lane, array: np.ndarray, spec: TensorSpec, padded: int) -> Any:
        """One input on the device, padded to ``padded`` rows, cast and laid out for the module."""
        torch = self._torch
        if spec.name in self._images:
            return self._decode(array, spec, padded)
        if not self._cuda and self._max_batch_size:
            array = pad_rows(array, padded)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        host = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16) if spec.datatype == "BF16" \
            else torch.from_numpy(array)
        if self._cuda:
            host = self._to_device(lane, spec.name, host, padded if self._max_batch_size else 0)
        if self._dtype is not None and spec.datatype in _FLOAT_INPUTS:
            host = host.to(self._dtype)
        if self._opt.channels_last and host.dim() == 4:
            host = host.contiguous(memory_format=torch.channels_last)
        return host

    def _decode(self, array: np.ndarray, spec: TensorSpec, padded: int) -> Any:
        """An image input: decoded where the model runs, padded there, cast and laid out."""
        torch = self._torch
        images = decode_batch(torch, list(array.reshape(-1)), self._images[spec.name], self._device,
                              f"input '{spec.name}'")
        if padded > images.shape[0]:
            images = torch.cat([images, images.new_zeros((padded - images.shape[0], *images.shape[1:]))])
        if self._cuda:
            images = images.to(self._device, non_blocking=True)
        if self._dtype is not None:
            images = images.to(self._dtype)
        if self._opt.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _to_device(self, lane: Lane, name: str, host: Any, padded: int) -> Any:
        """Through the lane's pinned buffer for this input: the rows written once, the padding
        zeroed there, one copy to the device that does not block (ordered on the lane's stream)."""
        torch = self._torch
        shape = (padded, *host.shape[1:]) if padded else tuple(host.shape)
        nbytes = host.element_size() * int(np.prod(shape, dtype=np.int64))
        slot = lane.pinned.get(name)
        if slot is not None and slot.used:
            slot.copied.synchronize()  # the previous copy out of this buffer is done
        if slot is None or slot.buffer.numel() < nbytes:
            slot = lane.pinned[name] = Staging(torch.empty(nbytes, dtype=torch.uint8, pin_memory=True),
                                               torch.cuda.Event())
        staged = slot.buffer[:nbytes].view(host.dtype).view(shape)
        rows = host.shape[0] if padded else 0
        if padded:
            staged[:rows].copy_(host)
            if rows < padded:
                staged[rows:].zero_()
        else:
            staged.copy_(host)
        device = staged.to(self._device, non_blocking=True)
        slot.copied.record(lane.stream)
        slot.used = True
        return device

    def _execute(self, lane: Lane, args: list[Any], rows: int) -> Any:
        if self._opt.compile != "cuda_graphs":
            return self._forward(*args)
        captured = lane.graphs.get(rows)
        if captured is None:
            captured = lane.graphs[rows] = self._capture(lane, args)
        graph, static_inputs, static_outputs = captured
        for static, arg in zip(static_inputs, args, strict=True):
            static.copy_(arg, non_blocking=True)
        graph.replay()
        return static_outputs  # read (copied to the host) before this lane runs again

    def _capture(self, lane: Lane, args: list[Any]) -> tuple[Any, list[Any], Any]:
        torch = self._torch
        static_inputs = [arg.clone() for arg in args]
        for _ in range(5):  # lazy initialisation (cuDNN/cuBLAS handles, autotuning, TorchScript's
            # profiling runs and fusions) all happen before capture, never inside it
            self._forward(*static_inputs)
        lane.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other instances keep running (and allocating) on their own threads meanwhile
        with torch.cuda.graph(graph, pool=lane.pool, stream=lane.stream, capture_error_mode="thread_local"):
            static_outputs = self._forward(*static_inputs)
        return graph, static_inputs, static_outputs

    def _to_host(self, tensor: Any, rows: int, padded: int) -> Any:
        torch = self._torch
        tensor = tensor.detach()
        if self._max_batch_size and padded != rows:
            tensor = tensor[:rows]
        if self._dtype is not None and tensor.dtype == self._dtype:
            tensor = tensor.to(torch.float32)  # the declared dtype's cast follows on the host, if any
        if self._opt.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous()
        if not self._cuda:
            return tensor
        out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        out.copy_(tensor, non_blocking=True)
        return out


def concat_rows(results: list[Arrays]) -> Arrays:
    """One answer from the answers of a batch's pieces."""
    if len(results) == 1:
        return results[0]
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}


def _rows(array: np.ndarray, start: int, stop: int, batched: int) -> np.ndarray:
    if not batched or (start, stop) == (0, array.shape[0]):
        return array
    return array[start:stop]


def _map(result: Any, convert: Callable[[Any], Any]) -> Any:
    if isinstance(result, dict):
        return {key: convert(value) for key, value in result.items()}
    if isinstance(result, list | tuple):
        return type(result)(convert(value) for value in result)
    return convert(result)


def _refuse(optimization: Optimization, cuda: bool, platform: str, name: str) -> None:
    where = f"model '{name}': [optimization]"
    if not cuda and optimization.precision == "fp16":
        raise ConfigError(f"{where} precision = \"fp16\" needs a GPU (kind = \"gpu\"); on the CPU use \"bf16\"")
    if not cuda and optimization.compile == "cuda_graphs":
        raise ConfigError(f"{where} compile = \"cuda_graphs\" needs a GPU (kind = \"gpu\"); on the CPU "
                          "use \"torch_compile\"")
    if optimization.compile == "torch_compile" and platform == "pytorch_libtorch":
        raise ConfigError(f"{where} compile = \"torch_compile\" cannot trace a TorchScript module; export the "
                          "model with torch.export (model.pt2), or use \"cuda_graphs\" on a GPU")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
