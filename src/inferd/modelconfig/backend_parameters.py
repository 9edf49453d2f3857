"""The ``parameters`` Triton's onnxruntime, pytorch and tensorflow backends read from config.pbtxt,
by their names there, so a model folder written for Triton loads unchanged. Each value is checked
when the configuration is read (a bad one is a load error that says what was expected); the
runtimes read them back with ``flag`` and ``count``. A Python model's parameters are its own and are
not checked here.

Sources, at the commits read: onnxruntime_backend@00fd3e87 (README "Model Config Options",
src/onnxruntime.cc), pytorch_backend@266fd386 (README "Parameters"), tensorflow_backend@c13c2d12
(README "Parameters").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from inferd.config import BATCH_WAIT_PARAMETER
from inferd.errors import ConfigError

_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}


def _boolean(text: str) -> str | None:
    return None if text.strip().lower() in _TRUE | _FALSE else "true or false"


def _zero_one(text: str) -> str | None:
    return None if text in ("0", "1") else "0 or 1"


def _count(text: str) -> str | None:
    if text.isascii() and text.isdigit() and len(text) <= 20 and int(text) < 1 << 64:
        return None
    return "a count (0 to 2^64-1)"


_THREADS_MOST = 4096


def _threads(text: str) -> str | None:
    if text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= _THREADS_MOST:
        return None
    return f"a thread count (0 to {_THREADS_MOST})"


def _choice(*allowed: str) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        return None if text in allowed else " or ".join(allowed)
    return check


def _any(text: str) -> str | None:
    return None


def arena_devices(text: str) -> list[tuple[str, int]]:
    """The (device, id) entries of an arena shrinkage list (``cpu:0;gpu:0``; an id left out is 0,
    as onnxruntime reads it; -1 for one that is no number; empty entries skipped)."""
    entries = []
    for entry in filter(None, text.split(";")):
        device, _, number = entry.partition(":")
        entries.append((device, int(number or "0") if (number or "0").isascii() and (number or "0").isdigit()
                        else -1))
    return entries


def _arena_list(text: str) -> str | None:
    """onnxruntime fails every run, not the load, on an entry it cannot parse."""
    ok = all(device in ("cpu", "gpu") and number >= 0 for device, number in arena_devices(text))
    return None if ok else "arenas as device:id separated by ';' (such as cpu:0;gpu:0)"


# inferd's backend -> {Triton's parameter -> its check}; each is applied as the comment says
KNOWN: dict[str, dict[str, Callable[[str], str | None]]] = {
    "onnx": {
        "intra_op_thread_count": _threads,  # SessionOptions.intra_op_num_threads (0: onnxruntime's choice)
        "inter_op_thread_count": _threads,  # inter_op_num_threads, used by execution_mode 1
        "execution_mode": _zero_one,  # 0 sequential, 1 parallel
        "enable_mem_arena": _zero_one,  # enable_cpu_mem_arena
        "enable_mem_pattern": _zero_one,  # enable_mem_pattern
        "memory.enable_memory_arena_shrinkage": _arena_list,  # a run option, e.g. "cpu:0"
        "session.use_device_allocator_for_initializers": _zero_one,  # a session config entry
        # the CUDA execution provider's options (Triton's deprecated spelling): on a GPU only
        "cudnn_conv_algo_search": _choice("0", "1", "2"), "gpu_mem_limit": _count,
        "arena_extend_strategy": _choice("0", "1"), "do_copy_in_default_stream": _zero_one,
    },
    "torch": {
        "INTRA_OP_THREAD_COUNT": _threads,  # torch.set_num_threads, as intra_op_thread_count
        "INTER_OP_THREAD_COUNT": _threads,  # torch.set_num_interop_threads: process-wide, the first one set wins
        "DISABLE_OPTIMIZED_EXECUTION": _boolean,  # TorchScript runs under torch.jit.optimized_execution(False)
        "INFERENCE_MODE": _boolean,  # each call under torch.inference_mode() (else autograd off)
        "DISABLE_CUDNN": _boolean,  # each call under torch.backends.cudnn.flags(enabled=False)
        "ENABLE_CACHE_CLEANING": _boolean,  # torch.cuda.empty_cache() after each call on a GPU
        "ENABLE_WEIGHT_SHARING": _boolean,  # accepted: an instance's threads already share one module
        "ENABLE_JIT_EXECUTOR": _boolean,  # process-wide TorchScript executor switches, as in Triton
        "ENABLE_JIT_PROFILING": _boolean,
        "ENABLE_TENSOR_FUSER": _boolean,
        "intra_op_thread_count": _threads,
    },
    "tensorflow": {
        "TF_NUM_INTRA_THREADS": _threads,  # the session's intra_op_parallelism_threads
        "TF_NUM_INTER_THREADS": _threads,  # inter_op_parallelism_threads
        "TF_USE_PER_SESSION_THREADS": _boolean,  # accepted: every model has its own session threads
        "TF_SIGNATURE_DEF": _any,  # the signature served (default serving_default)
        "TF_GRAPH_TAG": _any,  # the MetaGraph tag loaded (default serve)
        "intra_op_thread_count": _threads,
    },
}


def check_parameters(backend: str, parameters: Mapping[str, str], where: str) -> None:
    """Every parameter is one the backend reads, with a value it takes."""
    known = KNOWN.get(backend)
    if known is None:
        return
    for key, value in parameters.items():
        check = known.get(key)
        if check is None and key == BATCH_WAIT_PARAMETER:  # inferd's own, any backend (convert.py checks it)
            continue
        if check is None:
            raise ConfigError(f"{where}: parameter '{key}' is not one inferd serves for this backend "
                              f"(known: {', '.join(known)})")
        expected = check(value)
        if expected is not None:
            raise ConfigError(f"{where}: parameter '{key}' must be {expected}, got {value!r}")


def flag(parameters: Mapping[str, str], key: str, default: bool = False) -> bool:
    """A checked boolean parameter (Triton's spellings: true/false, 1/0, on/off)."""
    text = parameters.get(key)
    return default if text is None else text.strip().lower() in _TRUE


def count(parameters: Mapping[str, str], *keys: str) -> int:
    """The first of ``keys`` set, as a checked count; 0 when none is."""
    for key in keys:
        if key in parameters:
            return int(parameters[key])
    return 0


def intra_op_threads(parameters: Mapping[str, str], where: str) -> int:
    """inferd's own ``intra_op_thread_count`` (every backend; onnxruntime's name for it), as a count."""
    text = parameters.get("intra_op_thread_count", "0")
    if _threads(text) is not None:
        raise ConfigError(f"{where}: parameter 'intra_op_thread_count' must be {_threads(text)}, got {text!r}")
    return int(text)
