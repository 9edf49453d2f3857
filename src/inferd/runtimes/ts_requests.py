"""Request bodies as TorchServe hands them to a handler (decoded by content type, or form fields);
its answers as bytes."""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import parse_qsl

import orjson

log = logging.getLogger("inferd.handler")
DECODE_ENV = "TS_DECODE_INPUT_REQUEST"  # TorchServe's worker reads it; its front end sets it from decode_input_request


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


def decodes_input(environ: Mapping[str, str] | None = None) -> bool:
    """Whether values are decoded by content type: ``TS_DECODE_INPUT_REQUEST`` unset or exactly
    ``true``, as TorchServe's worker reads it (``True`` or ``1`` leave bytes)."""
    value = (os.environ if environ is None else environ).get(DECODE_ENV)
    return value is None or value == "true"


def decode_row(body: bytes, content_type: str, decode: bool = True) -> dict[str, Any]:
    """One request as TorchServe gives it to a handler: the body (decoded by its content type when
    ``decode``), or the form's fields."""
    if content_type.startswith("multipart/form-data"):
        return _form_fields(body, content_type, decode)
    if content_type.startswith("application/x-www-form-urlencoded"):
        return _url_encoded_fields(body) or {"body": bytearray(body)}
    return {"body": decode_value(bytearray(body), mime_type(content_type), decode)}


def mime_type(content_type: str) -> str:
    """What TorchServe's front end sends its worker as a body's content type: the Content-Type
    header up to its first ``;`` (Netty's ``HttpUtil.getMimeType``: case and spaces kept)."""
    return content_type.split(";", 1)[0]


def decode_value(value: bytearray, content_type: str, decode: bool) -> Any:
    """TorchServe's worker (``_retrieve_input_data``): ``application/json`` is parsed, ``text*``
    becomes str, anything else stays bytes; a value that does not decode stays bytes, with a warning."""
    if not decode:
        return value
    try:
        if content_type == "application/json":
            return json.loads(value.decode("utf-8"))
        if content_type.startswith("text"):
            return value.decode("utf-8")
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("the %s input did not decode: the handler gets its bytes", content_type, exc_info=True)
    return value


def _url_encoded_fields(body: bytes) -> dict[str, Any]:
    """A URL-encoded form's fields as TorchServe's front end sends them: each value read as UTF-8
    (Netty's default charset; a bad sequence becomes U+FFFD) and handed over as a bytearray."""
    pairs = parse_qsl(body.decode("utf-8", "replace"), encoding="utf-8", errors="replace")
    return {name: bytearray(value.encode()) for name, value in pairs}


def _form_fields(body: bytes, content_type: str, decode: bool) -> dict[str, Any]:
    """A multipart form's fields: a file's (a part with a ``filename``) decoded by its own content
    type (``application/octet-stream`` when it names none), a plain field's bytes, as TorchServe's
    front end (Netty's FileUpload and Attribute) sends them."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            # decode=True: the part's bytes (transfer encoding undone), or None for a nested multipart
            payload = bytearray(cast(bytes | None, part.get_payload(decode=True)) or b"")
            is_file = part.get_param("filename", header="content-disposition") is not None
            part_type = mime_type(str(part.get("content-type", "application/octet-stream"))).strip()
            fields[str(name)] = decode_value(payload, part_type, decode) if is_file else payload
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


def with_headers(content_type: str, headers: Mapping[str, Any]) -> str:
    """The ``content_type`` output: the answer's content type, then the other headers the handler
    set (``context.set_response_header``) as ``name: value`` lines, CRLF-separated as
    ``split_headers`` reads the request's. A header whose name or value holds a line break, or
    whose name is empty or holds a colon, cannot be sent: it is logged and left out."""
    lines = [content_type]
    for name, value in headers.items():
        name, value = str(name), str(value)
        if not name.strip() or ":" in name or any(c in name + value for c in "\r\n"):
            log.warning("response header %r: %r cannot be sent (a line break, a colon in the name or no name)",
                        name, value)
        elif name.lower() == "content-type":  # in any case: the last one set is the answer's, as in TorchServe
            lines[0] = value
        else:
            lines.append(f"{name}: {value}")
    return "\r\n".join(lines)
