"""Who may change what is served: model control on or off, and the bearer token that guards it."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from inferd.errors import Forbidden, Unauthenticated

log = logging.getLogger("inferd.auth")


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    model_control: bool = False  # load/unload/register/scale over the API
    token: str | None = None  # required as "Authorization: Bearer <token>" when set
    guard_inference: bool = False  # the token also guards inference and metadata (not health)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():  # an empty token is none, never "" to match
            object.__setattr__(self, "token", None)

    def authorize_control(self, authorization: str | None, action: str) -> None:
        self.require_model_control(action)
        self._check(authorization, action)

    def require_model_control(self, action: str) -> None:
        """Model control is on (a model's own loads need no token: they are the server's code)."""
        if not self.model_control:
            raise Forbidden(f"{action} needs model control, which is off; start the server with "
                            "--model-control explicit (inferd tfserving: --model-control-api)")

    def authorize_inference(self, authorization: str | None, action: str = "inference") -> None:
        """Inference and every read of what is served (metadata, index, status, metrics)."""
        if self.guard_inference:
            self._check(authorization, action)

    @property
    def open_control(self) -> bool:
        """Model control is on with no token: only loopback may use it (the transport checks where
        a request comes from, e.g. HTTP's Origin and Host)."""
        return self.model_control and self.token is None

    def _check(self, authorization: str | None, action: str) -> None:
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            log.warning("refused %s: %s bearer token", action, "wrong" if given else "no")
            raise Unauthenticated(f"{action} needs 'Authorization: Bearer <token>' with the server's "
                                  "--auth-token")
