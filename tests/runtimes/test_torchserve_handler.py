"""The TorchServe handler runtime's parts: request decoding, answer encoding, the manifest, a handler run."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inferd.errors import ConfigError
from inferd.runtimes import handler, ts_requests
from inferd.runtimes.torchserve import read_manifest
from inferd.runtimes.ts_context import Context
from inferd.runtimes.ts_requests import decode_row, encode_answer


def test_a_raw_body_is_one_field() -> None:
    assert decode_row(b"\x00\x01", "application/octet-stream") == {"body": bytearray(b"\x00\x01")}


def test_a_urlencoded_form_is_its_fields() -> None:
    assert decode_row(b"a=1&b=x", "application/x-www-form-urlencoded") == {"a": b"1", "b": b"x"}
    assert decode_row(b"", "application/x-www-form-urlencoded") == {"body": bytearray()}
    fields = decode_row(b"a=caf%C3%A9+%E2%98%95&b=%FF", "application/x-www-form-urlencoded")
    assert fields == {"a": "café ☕".encode(), "b": "\ufffd".encode()}  # UTF-8, as Netty reads them
    assert all(type(value) is bytearray for value in fields.values())


def test_a_multipart_form_is_its_fields() -> None:
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n\x00\xffpixels\r\n--XX--\r\n")
    assert decode_row(body, "multipart/form-data; boundary=XX") == {"data": bytearray(b"\x00\xffpixels")}


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/json", {"values": [1, 2]}),
    ("application/json; charset=utf-8", {"values": [1, 2]}),  # the worker gets the mime type alone
    ("Application/JSON", bytearray(b'{"values": [1, 2]}')),  # compared as sent: case counts
    ("application/json ; charset=utf-8", bytearray(b'{"values": [1, 2]}')),  # so do spaces before ';'
    ("text/plain", '{"values": [1, 2]}'),
    ("text/csv; charset=utf-8", '{"values": [1, 2]}'),
    ("application/octet-stream", bytearray(b'{"values": [1, 2]}')),
    ("", bytearray(b'{"values": [1, 2]}')),
])
def test_a_body_is_decoded_by_its_content_type_as_torchserves_worker_does(content_type: str, expected: object
                                                                          ) -> None:
    row = decode_row(b'{"values": [1, 2]}', content_type)
    assert row == {"body": expected} and type(row["body"]) is type(expected)


def test_a_body_that_does_not_decode_stays_bytes_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert decode_row(b"{not json", "application/json") == {"body": bytearray(b"{not json")}
    assert decode_row(b"\xff\xfe", "text/plain") == {"body": bytearray(b"\xff\xfe")}
    assert [r.levelname for r in caplog.records if r.name == "inferd.handler"] == ["WARNING", "WARNING"]


def test_decode_input_request_false_leaves_every_body_bytes() -> None:
    assert decode_row(b'{"a": 1}', "application/json", decode=False) == {"body": bytearray(b'{"a": 1}')}
    assert decode_row(b"hi", "text/plain", decode=False) == {"body": bytearray(b"hi")}
    assert ts_requests.decodes_input({}) is True
    assert ts_requests.decodes_input({"TS_DECODE_INPUT_REQUEST": "true"}) is True
    for value in ("false", "True", "1", ""):  # TorchServe's worker compares with "true" exactly
        assert ts_requests.decodes_input({"TS_DECODE_INPUT_REQUEST": value}) is False


def test_a_multipart_file_is_decoded_by_its_own_type_and_a_plain_field_is_bytes() -> None:
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"meta\"; filename=\"m.json\"\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n\r\n{\"k\": 3}\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"note\"; filename=\"n.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\nhello\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"raw\"; filename=\"r\"\r\n\r\n{\"k\": 4}\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"field\"\r\n"
            b"Content-Type: application/json\r\n\r\n{\"k\": 5}\r\n--XX--\r\n")
    assert decode_row(body, "multipart/form-data; boundary=XX") == {
        "meta": {"k": 3}, "note": "hello", "raw": bytearray(b'{"k": 4}'), "field": bytearray(b'{"k": 5}')}
    assert decode_row(body, "multipart/form-data; boundary=XX", decode=False)["meta"] == bytearray(b'{"k": 3}')


def test_answers_become_bytes_with_a_content_type() -> None:
    assert encode_answer(b"raw", None) == (b"raw", "application/octet-stream")
    assert encode_answer("hi", None) == (b"hi", "text/plain; charset=utf-8")
    assert encode_answer(np.array([1.5, 2.0]), None) == (b"[1.5,2.0]", "application/json")
    assert encode_answer({1: "a"}, "application/x-mine") == (b'{"1":"a"}', "application/x-mine")


def test_names_from_before_the_split_still_import_from_handler() -> None:
    assert handler.decode_row is ts_requests.decode_row
    assert handler.encode_answer is ts_requests.encode_answer
    assert handler.Context is Context


def test_a_manifest_must_exist_and_name_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no readable"):
        read_manifest(tmp_path)
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text("[]")
    with pytest.raises(ConfigError, match="no 'model' object"):
        read_manifest(tmp_path)


def test_a_function_handler_runs_a_batch(tmp_path: Path) -> None:
    (tmp_path / "echo_handler.py").write_text(textwrap.dedent("""
        def handle(data, context):
            if data is None:
                context.initialised = True
                return None
            context.set_response_content_type(1, "text/x-second")
            return [row.get("body", b"form") for row in data]
    """))
    manifest = {"model": {"handler": "echo_handler.py:handle"}}
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    try:
        runtime = handler.build("echo", tmp_path, read_manifest(tmp_path), 4, None)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("echo_handler", None)
    assert getattr(runtime._context, "initialised", False)
    bodies = np.empty(2, dtype=object)
    bodies[:] = [b"one", b"a=1"]
    kinds = np.array([b"application/octet-stream", b"application/x-www-form-urlencoded"], dtype=object)
    out = runtime.infer({"body": bodies, "content_type": kinds})
    assert out["output"].tolist() == [b"one", b"form"]
    assert out["content_type"].tolist() == [b"application/octet-stream", b"text/x-second"]


def test_a_handler_answering_the_wrong_count_fails_clearly(tmp_path: Path) -> None:
    runtime = handler.HandlerRuntime(lambda data, context: [], Context("m", str(tmp_path), {}, 1, None), 1, "m")
    body = np.empty(1, dtype=object)
    body[:] = [b"x"]
    with pytest.raises(RuntimeError, match="returned 0 results for a batch of 1"):
        runtime.infer({"body": body, "content_type": np.array([b"text/plain"], dtype=object)})


def _streaming_runtime(sent: list[int]) -> handler.HandlerRuntime:
    from inferd.runtimes.ts_context import send_intermediate_predict_response

    def handle(data: list[dict[str, object]], context: Context) -> list[str]:
        for i in range(5):
            send_intermediate_predict_response([f"part {i}"], context.request_ids, "", 202, context)
            sent.append(i)
        return ["last"]

    context = Context("m", ".", {"model": {}}, 1, None)
    return handler.HandlerRuntime(handle, context, 1, "m")


def _one_request() -> dict[str, np.ndarray]:
    return {"body": np.array([b"{}"], dtype=object), "content_type": np.array([b"content-type: text/plain"],
                                                                             dtype=object)}


def test_intermediate_answers_come_before_the_last_marked_as_such() -> None:
    from inferd.types import INTERMEDIATE_OUTPUT

    runtime = _streaming_runtime([])
    parts: list[dict[str, np.ndarray]] = []
    last = runtime.infer_parts(_one_request(), lambda part: parts.append(part) is None)
    answers = [*parts, last]
    assert [bytes(a["output"][0]) for a in answers] == [b"part 0", b"part 1", b"part 2", b"part 3", b"part 4", b"last"]
    assert [INTERMEDIATE_OUTPUT in a for a in answers] == [True] * 5 + [False]
    assert answers[0]["status"].tolist() == [202] and answers[-1]["status"].tolist() == [200]
    # a plain call (v2 /infer, a batch) drops them: the answer is the handler's
    assert bytes(runtime.infer(_one_request())["output"][0]) == b"last"


def test_once_nobody_reads_no_more_intermediate_answers_are_handed_on() -> None:
    sent: list[int] = []
    got: list[bytes] = []

    def emit(part: dict[str, np.ndarray]) -> bool:
        got.append(bytes(part["output"][0]))
        return False  # the client left after the first chunk

    last = _streaming_runtime(sent).infer_parts(_one_request(), emit)
    assert got == [b"part 0"] and bytes(last["output"][0]) == b"last"
    assert sent == [0, 1, 2, 3, 4]  # the handler ran to its end, as TorchServe's
