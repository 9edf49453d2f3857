"""HPACK decoding of inferd's HTTP/2 server (transport/grpc/h2.py) against the ``hpack`` package's
encoder, at the edges RFC 7541 draws."""

from __future__ import annotations

import tracemalloc

import hpack
import pytest

from inferd.transport.grpc import h2


def test_blocks_from_hpack_decode_with_the_dynamic_table_and_its_size_updates() -> None:
    encoder, decoder = hpack.Encoder(), h2.HeaderDecoder()
    fields = [(":path", "/a/b"), ("content-type", "application/grpc"), ("x-user", "agent/1.0")]
    for _ in range(3):  # the second and third blocks index the first's fields
        assert decoder.decode(encoder.encode(fields)) == fields
    encoder.header_table_size = 64  # the encoder announces the smaller table at the next block
    assert decoder.decode(encoder.encode(fields)) == fields


def test_a_block_decoded_again_follows_the_table_as_it_is_now() -> None:
    """Blocks that leave the table alone are remembered (a client's calls repeat theirs); a block
    that adds to the table or resizes it makes every remembered one be read again."""
    decoder = h2.HeaderDecoder()
    first_dynamic = b"\xbe"  # index 62: the newest entry of the dynamic table
    assert decoder.decode(b"\x40\x01x\x011") == [("x", "1")]  # literal, added to the table
    assert decoder.decode(first_dynamic) == [("x", "1")]
    assert decoder.decode(first_dynamic) == [("x", "1")]
    assert decoder.decode(b"\x40\x01y\x012") == [("y", "2")]
    assert decoder.decode(first_dynamic) == [("y", "2")]
    assert decoder.decode(b"\x40\x01y\x012" + first_dynamic) == [("y", "2"), ("y", "2")]  # added twice,
    assert decoder.decode(b"\xbf") == [("y", "2")]  # not remembered: the older copy is at 63 now
    with pytest.raises(h2.ConnectionError_, match="not in the table"):
        decoder.decode(b"\x20" + first_dynamic)  # the table emptied by a size update of 0
    for n in range(200):  # distinct blocks: a bounded number kept
        assert decoder.decode(b"\x00\x01z" + bytes([3]) + f"{n:03d}".encode()) == [("z", f"{n:03d}")]
    assert len(decoder._blocks) <= 64


def test_a_size_update_after_a_field_is_a_compression_error() -> None:
    """RFC 7541 §4.2: size updates come first in a block, two at most; else a block of them
    alone would keep the loop busy (1 MiB of them took 1.3 s to decode)."""
    decoder = h2.HeaderDecoder()
    with pytest.raises(h2.ConnectionError_) as error:
        decoder.decode(b"\x82" + b"\x20")  # :method GET, then a size update
    assert error.value.code == h2.COMPRESSION_ERROR
    with pytest.raises(h2.ConnectionError_):
        decoder.decode(b"\x20" * 3 + b"\x82")
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(":method", "GET")]  # 0 then 4096: fine


def test_the_huffman_cache_keeps_only_short_values() -> None:
    """Distinct long Huffman values, one per block: the decoder's memory stays small (it kept
    each one, 513 at most: up to ~80 MB a connection with 64 KiB values)."""
    decoder = h2.HeaderDecoder()
    huffman = hpack.huffman.HuffmanEncoder(hpack.huffman_constants.REQUEST_CODES,
                                           hpack.huffman_constants.REQUEST_CODES_LENGTH)
    blocks = []
    for n in range(600):
        value = huffman.encode(f"{n:04d}".encode() + b"v" * 2000)
        blocks.append(b"\x10\x01x" + h2._integer(len(value), 7, 0x80) + value)  # x: <value>, never indexed
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n, block in enumerate(blocks):
        assert decoder.decode(block) == [("x", f"{n:04d}" + "v" * 2000)]
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert kept < 256 << 10, f"the decoder kept {kept} bytes"


GRPC = [(":method", "POST"), (":scheme", "http"), (":path", "/a/B"), (":authority", "x"), ("te", "trailers"),
        ("content-type", "application/grpc"), ("x-meta", "1"), ("grpc-timeout", "5S")]


def test_request_fields_picks_what_the_server_reads() -> None:
    for _ in range(2):  # the second time every name is known
        assert h2.request_fields(GRPC) == {":method": "POST", ":scheme": "http", ":path": "/a/B", ":authority": "x",
                                           "te": "trailers", "content-type": "application/grpc",
                                           "grpc-timeout": "5S"}


@pytest.mark.parametrize(("fields", "message"), [
    ([*GRPC, ("X-Meta", "1")], "field name 'X-Meta'"),
    ([*GRPC, ("x meta", "1")], "field name 'x meta'"),
    ([*GRPC, ("", "1")], "field name ''"),
    ([*GRPC, ("upgrade", "h2c")], "connection-specific field 'upgrade'"),
    ([*GRPC[:4], ("te", "gzip")], "te: 'gzip'"),
    ([*GRPC, (":path", "/again")], "pseudo-header :path after a regular field"),
    ([(":path", "/"), *GRPC], "pseudo-header :path twice"),
    ([(":protocol", "websocket"), *GRPC], "pseudo-header :protocol in a request"),
    (GRPC[1:], "request without :method"),
    ([GRPC[0], (":path", ""), *GRPC[3:]], "request without :scheme, :path"),
])
def test_request_fields_refuses_what_rfc_9113_calls_malformed(fields: list[tuple[str, str]], message: str) -> None:
    for _ in range(2):  # a bad name is never remembered as good
        with pytest.raises(h2.StreamError, match=message) as error:
            h2.request_fields(fields)
        assert error.value.code == h2.PROTOCOL_ERROR
