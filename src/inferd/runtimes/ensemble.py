"""An ensemble's version as the registry holds it: its declared tensors and nothing to run.

Its steps run in the server (``scheduling/ensemble.py``), each through the data plane and its own
model's scheduler; this runtime only describes the ensemble, so metadata, readiness, versions and
reloads work as for any model."""

from __future__ import annotations

from inferd.errors import ModelError
from inferd.runtimes.base import Arrays, LoadContext, Runtime, require_specs


class EnsembleRuntime(Runtime):
    platform = "ensemble"

    def __init__(self, context: LoadContext) -> None:
        self.inputs, self.outputs = require_specs(context, "ensemble")
        self.max_batch_size = context.config.max_batch_size
        self._name = context.name

    def infer(self, inputs: Arrays) -> Arrays:
        raise ModelError(f"ensemble '{self._name}' runs its steps in the server, not as one call")


def load(context: LoadContext) -> Runtime:
    return EnsembleRuntime(context)
