"""The response cache on its own: keys, the byte bound, least recently used first; and the
configuration that turns it on (config.toml and config.pbtxt)."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.config import ServerSettings, parse_model_config
from inferd.core.cache import ENTRY_OVERHEAD, ResponseCache, outputs_size, request_key
from inferd.errors import ConfigError
from inferd.modelconfig import ServedConfig, model_config_json, parse_pbtxt


def key(arrays: dict[str, np.ndarray], wanted: tuple[str, ...] = ("y",), generation: int = 1,
        signature: str = "") -> bytes:
    return request_key(generation, signature, arrays, list(wanted))


def test_the_key_tells_apart_everything_that_decides_the_answer() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = key({"x": x})
    assert key({"x": x.copy()}) == base  # the same bytes: the same answer
    assert key({"x": np.asfortranarray(x)}) == base  # memory layout is not the tensor
    different = [
        key({"x": x.reshape(3, 2)}),  # shape
        key({"x": x.astype(np.int32)}),  # datatype
        key({"x": x + 1}),  # bytes
        key({"z": x}),  # name
        key({"x": x}, wanted=("y", "n")),  # outputs asked for
        key({"x": x}, wanted=("n",)),
        key({"x": x}, generation=2),  # another loaded version
        key({"x": x}, signature="other"),
    ]
    assert len({base, *different}) == len(different) + 1


def test_bytes_tensors_are_keyed_by_each_element() -> None:
    a = np.array([b"ab", b"c"], dtype=object)
    b = np.array([b"a", b"bc"], dtype=object)  # the same bytes joined, split otherwise
    assert key({"s": a}) != key({"s": b})
    assert key({"s": a}) == key({"s": np.array([b"ab", b"c"], dtype=object)})


def test_least_recently_used_leaves_first_within_the_byte_bound() -> None:
    one = {"y": np.zeros(100, dtype=np.float32)}  # 400 bytes + overhead
    size = outputs_size(one)
    assert size == 400 + ENTRY_OVERHEAD
    cache = ResponseCache(max_bytes=size * 2)
    cache.put(b"a", one)
    cache.put(b"b", one)
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", one)  # room for two: b goes
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None and cache.get(b"c") is not None
    assert cache.usage.evictions == 1
    assert cache.usage.bytes == 2 * size and cache.usage.entries == 2


def test_an_answer_larger_than_the_cache_is_not_kept() -> None:
    cache = ResponseCache(max_bytes=1000)
    assert not cache.put(b"big", {"y": np.zeros(1000, dtype=np.float32)})
    assert len(cache) == 0 and cache.usage.bytes == 0


def test_kept_answers_are_copies_nobody_can_change() -> None:
    cache = ResponseCache(max_bytes=1 << 20)
    out = np.ones(4, dtype=np.float32)
    cache.put(b"k", {"y": out})
    out[:] = 7  # the model reuses its buffer
    kept = cache.get(b"k")
    assert kept is not None
    np.testing.assert_array_equal(kept["y"], np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError):
        kept["y"][0] = 3


def test_config_toml_enables_it_and_refuses_unknown_keys() -> None:
    assert parse_model_config({"response_cache": {"enable": True}}, "config.toml").response_cache
    assert not parse_model_config({}, "config.toml").response_cache
    with pytest.raises(ConfigError, match=r"\[response_cache\]: key 'size' is not known"):
        parse_model_config({"response_cache": {"size": 3}}, "config.toml")
    with pytest.raises(ConfigError, match="key 'enable' must be true or false"):
        parse_model_config({"response_cache": {"enable": "yes"}}, "config.toml")


def test_config_pbtxt_enables_it_and_the_configuration_shows_it() -> None:
    config = parse_pbtxt('backend: "onnxruntime"\nresponse_cache { enable: true }\n', "config.pbtxt", "m")
    assert config.response_cache
    shown = model_config_json(ServedConfig("m", "onnxruntime_onnx", "onnx", config))
    assert shown["response_cache"] == {"enable": True}


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="--cache-size must be >= 0"):
        ServerSettings(cache_size=-1)
