"""Who may change what is served: model control on or off, and the bearer token that guards it."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from inferd.errors import TOKEN_REFUSED, Forbidden, Unauthenticated

log = logging.getLogger("inferd.auth")

KEY_KINDS = ("management", "inference")  # TorchServe's keys with an expiry; "API" renews them


class TokenRefused(Forbidden):
    """TorchServe's refusal of a missing, wrong or expired key (its HTTP answer is a 400, its gRPC
    answer PERMISSION_DENIED), in its words."""

    def __init__(self) -> None:
        super().__init__(TOKEN_REFUSED)


class TorchServeKeys:
    """TorchServe's token authorization (``inferd torchserve``): a management key for the management
    API, an inference key for the inference API, each valid for ``expiration_s`` after it was made,
    and an API key that makes either anew (``GET /token?type=...``). ``key_file.json`` holds them
    in TorchServe's layout, rewritten on every change and removed at the stop."""

    def __init__(self, key_file: Path, expiration_s: float) -> None:
        self.path, self._expiration_s = key_file, expiration_s
        self._api = secrets.token_urlsafe(24)
        self._keys = {kind: self._new() for kind in KEY_KINDS}
        self._write()

    def valid(self, kind: str, authorization: str | None) -> bool:
        """Whether ``authorization`` is ``Bearer <key>`` with ``kind``'s key (``"API"``: the API key), unexpired."""
        scheme, _, given = (authorization or "").partition(" ")
        key, expires = (self._api, float("inf")) if kind == "API" else self._keys[kind]
        return (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())
                and time.time() < expires)

    def renew(self, kind: str) -> None:
        self._keys[kind] = self._new()
        self._write()

    def _new(self) -> tuple[str, float]:
        return secrets.token_urlsafe(24), time.time() + self._expiration_s

    def _write(self) -> None:
        def entry(kind: str) -> dict[str, str]:
            key, expires = self._keys[kind]
            return {"key": key, "expiration time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))}

        self.path.write_text(json.dumps({"management": entry("management"), "inference": entry("inference"),
                                         "API": {"key": self._api}}, indent=2))
        self.path.chmod(0o600)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    model_control: bool = False  # load/unload/register/scale over the API
    token: str | None = None  # required as "Authorization: Bearer <token>" when set
    guard_inference: bool = False  # the token also guards inference and metadata (not health)
    keys: TorchServeKeys | None = None  # instead of the token: TorchServe's keys (either one passes here)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():  # an empty token is none, never "" to match
            object.__setattr__(self, "token", None)

    def authorize_control(self, authorization: str | None, action: str) -> None:
        self.require_model_control(action)
        self._check(authorization, action)

    def require_model_control(self, action: str) -> None:
        """Model control is on (a model's own loads need no token: they are the server's code)."""
        if not self.model_control:
            raise Forbidden(f"explicit model load / unload is not allowed (Triton's words): {action} needs model "
                            "control, which is off; start the server with --model-control explicit "
                            "(inferd tfserving: --model-control-api)")

    def authorize_inference(self, authorization: str | None, action: str = "inference") -> None:
        """Inference and every read of what is served (metadata, index, status, metrics)."""
        if self.guard_inference or self.keys is not None:
            self._check(authorization, action)

    def authorize_door(self, authorization: str | None, kind: str) -> None:
        """TorchServe's check at its doors: the inference API needs the inference key, the
        management API the management key (no check without keys)."""
        if self.keys is not None and not self.keys.valid(kind, authorization):
            log.warning("refused a %s request: %s key", kind, "wrong or expired" if authorization else "no")
            raise TokenRefused()

    def renew_key(self, authorization: str | None, kind: str) -> None:
        """TorchServe's ``GET /token?type=management|inference``, with the API key."""
        if self.keys is None or not self.keys.valid("API", authorization) or kind not in KEY_KINDS:
            raise TokenRefused()
        self.keys.renew(kind)

    @property
    def open_control(self) -> bool:
        """Model control is on with no token: only loopback may use it (the transport checks where
        a request comes from, e.g. HTTP's Origin and Host)."""
        return self.model_control and self.token is None and self.keys is None

    def _check(self, authorization: str | None, action: str) -> None:
        if self.keys is not None:
            if not any(self.keys.valid(kind, authorization) for kind in KEY_KINDS):
                log.warning("refused %s: %s key", action, "wrong or expired" if authorization else "no")
                raise TokenRefused()
            return
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            log.warning("refused %s: %s bearer token", action, "wrong" if given else "no")
            raise Unauthenticated(f"{action} needs 'Authorization: Bearer <token>' with the server's "
                                  "--auth-token")
