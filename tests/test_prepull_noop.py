"""docker/noop.c: the static binary every pre-pull init container runs (built here with gcc)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "docker" / "noop.c"


@pytest.fixture(scope="module")
def noop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("gcc")
    assert compiler, "gcc is needed to build docker/noop.c (apt-get install gcc libc6-dev)"
    binary = tmp_path_factory.mktemp("noop") / "noop"
    subprocess.run(
        [compiler, "-static", "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(SOURCE)],
        check=True,
        capture_output=True,
    )
    return binary


def _program_headers(binary: Path) -> list[int]:
    """ELF64 little-endian program header types (enough to tell static from dynamic)."""
    data = binary.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert data[4] == 2, "expected a 64-bit ELF"
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    return [
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    ]


def test_static_binary_without_interpreter(noop: Path) -> None:
    pt_interp, pt_dynamic = 3, 2
    headers = _program_headers(noop)
    assert pt_interp not in headers, "a dynamic loader would be missing from most images"
    assert pt_dynamic not in headers


def test_exits_zero_at_once(noop: Path) -> None:
    started = time.monotonic()
    result = subprocess.run([str(noop)], capture_output=True, timeout=10)
    assert result.returncode == 0
    assert result.stdout == b""
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_sleep_until_signal_then_exit_zero(noop: Path, stop_signal: signal.Signals) -> None:
    process = subprocess.Popen([str(noop), "--sleep"])
    try:
        time.sleep(0.5)
        assert process.poll() is None, "--sleep must keep running until signalled"
        process.send_signal(stop_signal)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_other_signals_do_not_end_the_sleep(noop: Path) -> None:
    process = subprocess.Popen([str(noop), "--sleep"])
    try:
        time.sleep(0.2)
        process.send_signal(signal.SIGCHLD)
        time.sleep(0.3)
        assert process.poll() is None
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "arguments",
    [["--help"], ["--sleep", "extra"], ["--slep"], ["x" * 10_000]],
    ids=["help", "extra-argument", "typo", "huge-argument"],
)
def test_unknown_arguments_are_a_usage_error(noop: Path, arguments: list[str]) -> None:
    result = subprocess.run([str(noop), *arguments], capture_output=True, timeout=10)
    assert result.returncode == 2
    assert result.stderr == b"usage: noop [--sleep]\n"
