"""``keep_freed_memory``: large blocks freed by one request are there for the next one, in the
server's process and in the ones it starts, with no page faults; the user's own settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from inferd.allocator import keep_freed_memory

# Eight 600 KB blocks at a time, like a body per request with eight in flight, freed and taken
# again 50 times; prints the page faults of rounds 2..50 (the first round faults in any case).
ROUNDS = """
import resource, sys
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = [bytearray(600_000) for _ in range(8)]
del blocks
before = faults()
for _ in range(49):
    blocks = [bytearray(600_000) for _ in range(8)]
    del blocks
print(faults() - before)
"""
PAGES = 49 * 8 * 600_000 // 4096  # what the rounds touch: a fault each if every block is new


def faults_in_rounds(env: dict[str, str], setup: str = "") -> int:
    out = subprocess.run([sys.executable, "-c", setup + ROUNDS], env=env, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


def clean_env() -> dict[str, str]:
    """The environment without any malloc settings (CI's own would change what glibc does)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_blocks_are_kept_for_the_next_request_here_and_in_children() -> None:
    kept_here = faults_in_rounds(clean_env(), "from inferd.allocator import keep_freed_memory\n"
                                              "assert keep_freed_memory(64 * 2**20)\n")
    started = "import os, subprocess, sys\nfrom inferd.allocator import keep_freed_memory\n" \
              "assert keep_freed_memory(64 * 2**20)\n" \
              f"sys.exit(subprocess.run([sys.executable, '-c', {ROUNDS!r}]).returncode)\n"
    child = subprocess.run([sys.executable, "-c", started], env=clean_env(), capture_output=True, text=True,
                           check=True)
    kept_in_child = int(child.stdout.split()[-1])
    assert kept_here < PAGES // 50, (kept_here, PAGES)
    assert kept_in_child < PAGES // 50, (kept_in_child, PAGES)
    if faults_in_rounds(clean_env()) < PAGES // 2:  # e.g. huge pages always on: nothing to show here
        pytest.skip("glibc's own thresholds did not fault these blocks in again on this machine")


def test_zero_or_the_users_own_settings_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory(0) is False
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert keep_freed_memory(64 * 2**20) is False
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1000"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000")
    assert keep_freed_memory(64 * 2**20) is False


def test_a_memory_limited_process_starts_without_what_was_kept() -> None:
    """In a subprocess (mallopt changes the process for good): what keep_freed_memory added is
    left out of a memory-limited child's environment; the user's own variables stay."""
    script = ("import os\nfrom inferd.allocator import keep_freed_memory, without_kept_memory\n"
              "assert keep_freed_memory(64 * 2**20)\n"
              "assert os.environ['MALLOC_TRIM_THRESHOLD_'] == str(64 * 2**20)\n"
              "env = without_kept_memory(dict(os.environ))\n"
              "assert not any(n in env for n in ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_'))\n"
              "assert env['MALLOC_ARENA_MAX'] == '4'\n"
              "assert keep_freed_memory(32 * 2**20), 'its own earlier setting is not the user\\'s'\n")
    subprocess.run([sys.executable, "-c", script], env={**clean_env(), "MALLOC_ARENA_MAX": "4"}, check=True)
