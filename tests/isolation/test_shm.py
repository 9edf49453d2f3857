"""The shared-memory exchange: what one side writes the other reads back exactly, and no file stays."""

from __future__ import annotations

import os

import numpy as np
import pytest

from inferd.isolation.shm import Reader, Writer, pack_calls, unpack_calls
from inferd.types import bfloat16


def round_trip(writer: Writer, reader: Reader, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    header, path = writer.write(arrays)
    if path is not None:
        reader.attach(path)
        assert not os.path.exists(path), "the reader unlinks the file once mapped"
    return reader.read(header, copy=True)


def test_every_kind_of_array_comes_back_equal() -> None:
    writer, reader = Writer("test"), Reader()
    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "i8": np.array([-1, 2, 3], dtype=np.int8),
        "empty": np.zeros((0, 5), dtype=np.float64),
        "bool": np.array([True, False]),
        "bf16": np.array([1.5, -2.0], dtype=bfloat16()),
        "strided": np.arange(20, dtype=np.int64)[::3],
        "bytes": np.array([b"a", b"\x00bc"], dtype=object),
        "big_bytes": np.array([[b"x" * 20000, b""], [bytes(range(256)) * 100, b"tail"]], dtype=object),
    }
    try:
        back = round_trip(writer, reader, arrays)
        assert list(back) == list(arrays)
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype, name
            assert back[name].shape == array.shape, name
            np.testing.assert_array_equal(back[name], array)
    finally:
        writer.close()
        reader.close()


def test_large_bytes_tensors_travel_in_the_buffer_and_small_ones_in_the_header() -> None:
    writer = Writer("test")
    try:
        header, _ = writer.write({"small": np.array([b"ab"], dtype=object),
                                  "large": np.array([b"z" * 40000], dtype=object)})
        kinds = {entry[0]: entry[1] for entry in header}
        assert kinds == {"small": None, "large": "BYTES"}
        assert header[1][4] == 4 + 40000  # length prefix + the element
    finally:
        writer.close()


def test_the_buffer_grows_for_a_bigger_call_and_copies_survive_the_next_call() -> None:
    writer, reader = Writer("test"), Reader()
    try:
        small = round_trip(writer, reader, {"x": np.ones(10, dtype=np.float32)})
        first_size = writer.size
        big = np.random.default_rng(1).standard_normal(3 * first_size // 8)
        back = round_trip(writer, reader, {"x": big})
        assert writer.size >= big.nbytes > first_size
        np.testing.assert_array_equal(back["x"], big)
        round_trip(writer, reader, {"x": np.zeros(10, dtype=np.float32)})
        np.testing.assert_array_equal(small["x"], np.ones(10, dtype=np.float32))
        np.testing.assert_array_equal(back["x"], big)
    finally:
        writer.close()
        reader.close()


def test_closing_the_writer_removes_a_file_nobody_attached() -> None:
    writer = Writer("test")
    _, path = writer.write({"x": np.ones(4)})
    assert path is not None and os.path.exists(path)
    writer.close()
    assert not os.path.exists(path)


def test_a_call_too_big_for_shared_memory_is_refused_before_anything_is_written() -> None:
    from inferd.isolation.shm import SharedMemoryFull

    huge = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(2**37,), strides=(0,))  # 1 TiB, no memory
    writer = Writer("test")
    try:
        with pytest.raises(SharedMemoryFull, match=r"has no room for 1048576\.0 MiB"):
            writer.write({"x": huge})
        assert writer.path is None
        back = round_trip(writer, Reader(), {"x": np.ones(3)})  # and the writer still works
        np.testing.assert_array_equal(back["x"], np.ones(3))
    finally:
        writer.close()


def test_several_calls_cross_as_one_write_and_come_back_apart() -> None:
    """A batch's requests handed over apart: each its own tensors (names with a slash too), one
    without any (an answer that failed) in its place."""
    writer, reader = Writer("test"), Reader()
    calls = [{"x": np.ones((1, 2), np.float32), "a/b": np.array([b"id"], dtype=object)}, {},
             {"x": np.zeros((3, 2), np.float32)}]
    try:
        back = unpack_calls(round_trip(writer, reader, pack_calls(calls)), len(calls))
    finally:
        writer.close()
        reader.close()
    assert [sorted(call) for call in back] == [["a/b", "x"], [], ["x"]]
    np.testing.assert_array_equal(back[0]["x"], calls[0]["x"])
    assert back[0]["a/b"].tolist() == [b"id"] and back[2]["x"].shape == (3, 2)
