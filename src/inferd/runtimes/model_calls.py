"""The process's way to the server's models, for models that call other models (Triton's BLS).

One server per process: the composition root installs the core's calls in the server process, and an
instance process installs the channel to its server. A model asks ``current()`` at call time."""

from __future__ import annotations

import os

from inferd.errors import Unavailable
from inferd.types import ModelCalls

_calls: ModelCalls | None = None
_installed_in = 0  # the process that installed _calls: a child forked from it has no way to its server


def install(calls: ModelCalls | None) -> None:
    global _calls, _installed_in
    _calls, _installed_in = calls, os.getpid()


def current() -> ModelCalls:
    if _calls is not None and _installed_in != os.getpid():  # an instance process's children install their own
        raise Unavailable("a process forked from the server process cannot call other models (the server's "
                          "threads stay in the server); a model that forks children that call other models runs "
                          "in instance processes (instance_group kind \"process\", Python models' default)")
    if _calls is None:
        raise Unavailable("this process serves no calls from a model to other models (no server is running here)")
    return _calls
