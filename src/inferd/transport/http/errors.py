"""ErrorCode -> HTTP status: the one table of HTTP numbers."""

from __future__ import annotations

from inferd.errors import ErrorCode

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.CONFLICT: 409,
    ErrorCode.ALREADY_EXISTS: 400,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.MODEL_FAILED: 500,
    ErrorCode.INVALID_CONFIG: 400,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNKNOWN: 400,
    ErrorCode.CANCELLED: 400,
}


def status_for(code: ErrorCode) -> int:
    return HTTP_STATUS.get(code, 500)
