"""The cancel slot between the server and an instance process: a call's cancel, and each request's
of a batch handed over apart, read through a second mapping of the same file (as the process maps it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from inferd.isolation.cancels import MAX_REQUESTS, CancelBoard


@pytest.fixture
def boards() -> Iterator[tuple[CancelBoard, CancelBoard]]:
    """The server's board and the process's mapping of the same slot."""
    server = CancelBoard()
    process = CancelBoard(os.dup(server.fd))
    yield server, process
    process.close()
    server.close()


def test_a_request_flag_is_its_own_and_its_calls(boards: tuple[CancelBoard, CancelBoard]) -> None:
    server, process = boards
    server.cancel_request(7, 2)
    assert process.request_cancelled(7, 2)
    assert not process.request_cancelled(7, 1)
    assert not process.request_cancelled(8, 2)  # another call's request of that index
    assert not process.cancelled(7)  # one request left, not the call


def test_flags_of_an_earlier_call_are_cleared_for_the_next(boards: tuple[CancelBoard, CancelBoard]) -> None:
    server, process = boards
    server.cancel_request(7, 2)
    server.cancel_request(9, 0)
    assert process.request_cancelled(9, 0)
    assert not process.request_cancelled(9, 2)
    assert not process.request_cancelled(7, 2)


def test_the_whole_call_cancelled_cancels_each_request(boards: tuple[CancelBoard, CancelBoard]) -> None:
    server, process = boards
    server.cancel(5)
    assert process.request_cancelled(5, 0) and process.request_cancelled(5, 3)


def test_a_request_past_the_flags_is_never_told(boards: tuple[CancelBoard, CancelBoard]) -> None:
    server, process = boards
    server.cancel_request(4, MAX_REQUESTS)
    assert not process.request_cancelled(4, MAX_REQUESTS)
