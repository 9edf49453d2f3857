"""Triton's restricted API groups as the transports see them (``--http-restricted-api``,
``--grpc-restricted-protocol``; parsed by config.py): a group answers only requests whose header
(gRPC metadata key) ``header`` is ``value``."""

from __future__ import annotations

from typing import Protocol


class Restriction(Protocol):
    @property
    def api(self) -> str: ...  # health, metadata, inference, ... (Triton's group names)

    @property
    def header(self) -> str: ...  # lower-case

    @property
    def value(self) -> str: ...
