"""Request bodies as TorchServe hands them to a handler (raw bytes or form fields); its answers as bytes."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any, cast
from urllib.parse import parse_qsl

import orjson


def split_headers(content_type: str) -> dict[str, str]:
    """The ``content_type`` input: the content type, then (TorchServe's door adds them) the
    request's other headers as ``name: value`` lines, CRLF-separated as on the wire."""
    first, *lines = content_type.split("\r\n")
    headers = {"content-type": first}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return headers


def decode_row(body: bytes, content_type: str) -> dict[str, Any]:
    """One request as TorchServe gives it to a handler: the raw body, or the form's fields."""
    if content_type.startswith("multipart/form-data"):
        return _form_fields(body, content_type)
    if content_type.startswith("application/x-www-form-urlencoded"):
        fields = {k: v.encode() for k, v in parse_qsl(body.decode("latin-1"))}
        return fields or {"body": bytearray(body)}
    return {"body": bytearray(body)}


def _form_fields(body: bytes, content_type: str) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            # decode=True: the part's bytes (transfer encoding undone), or None for a nested multipart
            payload = cast(bytes | None, part.get_payload(decode=True))
            fields[str(name)] = bytearray(payload or b"")
    if not fields:
        fields["body"] = bytearray(body)
    return fields


def encode_answer(result: Any, content_type: str | None) -> tuple[bytes, str]:
    """A handler's answer for one request as bytes, with its content type."""
    if isinstance(result, bytes | bytearray):
        return bytes(result), content_type or "application/octet-stream"
    if isinstance(result, str):
        return result.encode(), content_type or "text/plain; charset=utf-8"
    if hasattr(result, "tolist"):  # numpy arrays, torch tensors
        result = result.tolist()
    return (orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
            content_type or "application/json")
