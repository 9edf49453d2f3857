"""The process's way to the server's models, for models that call other models (Triton's BLS).

One server per process: the composition root installs the core's calls in the server process, and an
instance process installs the channel to its server. A model asks ``current()`` at call time."""

from __future__ import annotations

from inferd.errors import Unavailable
from inferd.types import ModelCalls

_calls: ModelCalls | None = None


def install(calls: ModelCalls | None) -> None:
    global _calls
    _calls = calls


def current() -> ModelCalls:
    if _calls is None:
        raise Unavailable("this process serves no calls from a model to other models (no server is running here)")
    return _calls
