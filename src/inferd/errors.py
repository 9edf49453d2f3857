"""The errors inferd raises. Each carries an :class:`ErrorCode`; transports pick the number.

    InferdError
    ├── InvalidInput          bad request: which tensor, what was expected, what came   (INVALID_ARGUMENT)
    │   └── PayloadTooLarge   body or tensor above a configured limit                   (TOO_LARGE)
    ├── NotFound              unknown model, version or signature (a label: InvalidInput) (NOT_FOUND)
    │   └── ServableNotFound  the model or the version asked for is not known
    ├── Unavailable           not ready, loading, draining                               (UNAVAILABLE)
    │   ├── GroupRefused      a worker's group the model no longer takes (sent again alone)
    │   └── QueueFull         the model's queue is at max_queue_size                     (UNAVAILABLE)
    ├── DeadlineExceeded      the request's deadline passed before it ran                (DEADLINE_EXCEEDED)
    ├── Unauthenticated       missing or wrong token                                     (UNAUTHENTICATED)
    ├── Forbidden             the operation is switched off                              (FORBIDDEN)
    ├── AlreadyExists         registering what is registered already                     (CONFLICT)
    │   └── AlreadyRegistered a name Triton's protocol says exists already: 400 over HTTP, as
    │                         Triton's HTTP server answers ALREADY_EXISTS                 (ALREADY_EXISTS)
    ├── Unimplemented         a method or datatype the protocol leaves unimplemented     (UNIMPLEMENTED)
    ├── UnknownError          a model's own error of Triton's code UNKNOWN: HTTP 400     (UNKNOWN)
    ├── Cancelled             a model's own error of Triton's code CANCELLED: HTTP 400   (CANCELLED)
    ├── FailedPrecondition    a change the server's present state does not allow        (FAILED_PRECONDITION)
    ├── ModelError            the model raised while running a request                  (MODEL_FAILED)
    │   └── InstanceLost      its instance process died while running it
    └── ConfigError           a repository or config.toml problem                        (INVALID_CONFIG)

No HTTP status or gRPC code lives here: ``transport/http/errors.py`` and ``transport/grpc/errors.py``
each hold one table from :class:`ErrorCode` to their numbers.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    ALREADY_EXISTS = "already_exists"
    UNIMPLEMENTED = "unimplemented"
    FAILED_PRECONDITION = "failed_precondition"
    MODEL_FAILED = "model_failed"
    INVALID_CONFIG = "invalid_config"
    INTERNAL = "internal"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


class InferdError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferdError):
    code = ErrorCode.INVALID_ARGUMENT


class PayloadTooLarge(InvalidInput):
    code = ErrorCode.TOO_LARGE


class NotFound(InferdError):
    code = ErrorCode.NOT_FOUND


class ServableNotFound(NotFound):
    """The model, or the version of it, asked for (TF Serving words these its own way)."""


class Unavailable(InferdError):
    code = ErrorCode.UNAVAILABLE


class GroupRefused(Unavailable):
    """A front-end worker's group of requests that the model no longer takes as one (its batch
    size changed meanwhile): the worker sends each member again on its own."""


class QueueFull(Unavailable):
    pass


class DeadlineExceeded(InferdError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Unauthenticated(InferdError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(InferdError):
    code = ErrorCode.FORBIDDEN


# TorchServe's refusal of a missing, wrong or expired key (auth.TokenRefused); its HTTP answer is a 400
TOKEN_REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


class AlreadyExists(InferdError):
    code = ErrorCode.CONFLICT


class AlreadyRegistered(AlreadyExists):
    """Triton's ALREADY_EXISTS (a shared-memory region's name registered twice): gRPC ALREADY_EXISTS,
    and HTTP 400 where TorchServe's conflict is 409, as Triton's HTTP server maps that code."""

    code = ErrorCode.ALREADY_EXISTS


class Unimplemented(InferdError):
    """What the server knowingly does not do for a well-formed request, where the protocol's own
    server answers UNIMPLEMENTED (TF Serving: a MultiInference method, a JSON tensor of half)."""

    code = ErrorCode.UNIMPLEMENTED


class UnknownError(InferdError):
    """A Triton Python model's error response of code UNKNOWN: HTTP 400 and gRPC UNKNOWN, as
    Triton's servers map TRITONSERVER_ERROR_UNKNOWN."""

    code = ErrorCode.UNKNOWN


class Cancelled(InferdError):
    """A Triton Python model's error response of code CANCELLED: HTTP 400 and gRPC CANCELLED, as
    Triton's servers map TRITONSERVER_ERROR_CANCELLED."""

    code = ErrorCode.CANCELLED


class FailedPrecondition(InferdError):
    """A well-formed change that what is served now does not allow (TF Serving: a label for a
    version that is not available)."""

    code = ErrorCode.FAILED_PRECONDITION


class ModelError(InferdError):
    code = ErrorCode.MODEL_FAILED


class InstanceLost(ModelError):
    """The model's instance process died (or was killed) while it ran the request."""


class ConfigError(InferdError):
    code = ErrorCode.INVALID_CONFIG


_BY_CODE: dict[ErrorCode, type[InferdError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidInput, ErrorCode.TOO_LARGE: PayloadTooLarge, ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.UNAVAILABLE: Unavailable, ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.UNAUTHENTICATED: Unauthenticated, ErrorCode.FORBIDDEN: Forbidden, ErrorCode.CONFLICT: AlreadyExists,
    ErrorCode.ALREADY_EXISTS: AlreadyRegistered, ErrorCode.UNIMPLEMENTED: Unimplemented,
    ErrorCode.FAILED_PRECONDITION: FailedPrecondition, ErrorCode.MODEL_FAILED: ModelError,
    ErrorCode.INVALID_CONFIG: ConfigError, ErrorCode.UNKNOWN: UnknownError, ErrorCode.CANCELLED: Cancelled,
}


def error_for(code: str, message: str) -> InferdError:
    """The error an :class:`ErrorCode`'s value names (one that crossed as plain data); an unknown
    value is an internal error."""
    try:
        kind = _BY_CODE.get(ErrorCode(code), InferdError)
    except ValueError:
        kind = InferdError
    return kind(message)


def describe(exc: BaseException, limit: int | None = None) -> str:
    """An exception as "Class: message" for an error's text (the message cut at ``limit``), even
    one whose ``str`` raises: a model's broken exception still reads as its class."""
    try:
        text = str(exc)[:limit]
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
