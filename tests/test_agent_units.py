"""The node agent's pure pieces, as tables: progress folding, error classes, sizes, names, settings.

These run without an engine; the behaviour against real engines is in
``test_agent_engines.py`` and ``test_agent_cli.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from imagewarden.errors import ConfigError, ImagePullError
from imagewarden.prepull.agent import AgentSettings, ImageRecord, ImageState, NodeAgent
from imagewarden.prepull.agent_cli import ProgressDisplay
from imagewarden.prepull.engines import (
    EngineKind,
    PullTarget,
    classify_pull_error,
    foreign_names,
    open_engine,
)
from imagewarden.prepull.engines.cri import stored_to_compressed_bytes
from imagewarden.prepull.engines.docker_engine import PullProgressTracker
from imagewarden.reference import parse
from imagewarden.registry import RegistryClient

LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64
CONFIG = "sha256:" + "c" * 64
SHORT_A, SHORT_B, SHORT_C = "a" * 12, "b" * 12, "c" * 12


def _msg(status: str, blob: str, current: int | None = None, total: int | None = None) -> Any:
    detail = {} if current is None else {"current": current, "total": total}
    return {"status": status, "id": blob, "progressDetail": detail}


@pytest.mark.parametrize(
    ("messages", "blob_sizes", "expected_bytes", "downloaded", "final"),
    [
        pytest.param(
            # messages: the Docker API pull stream
            [
                _msg("Pulling fs layer", SHORT_A),
                _msg("Downloading", SHORT_A, 500, 1000),
                _msg("Downloading", SHORT_A, 1000, 1000),
                _msg("Download complete", SHORT_A),
                _msg("Pull complete", SHORT_A),
            ],
            # blob_sizes: from the manifest (empty when unknown)
            {},
            # expected_bytes: the registry's compressed size (None when unknown)
            None,
            # downloaded: bytes counted after the last message
            1000,
            # final: final_bytes(expected_bytes)
            (1000, True),
            id="dockerd-counts-every-byte",
        ),
        pytest.param(
            [
                _msg("Pulling fs layer", SHORT_A),
                _msg("Pulling fs layer", SHORT_C),
                _msg("Download complete", SHORT_C),
                _msg("Downloading", SHORT_A, 700, 1000),
                _msg("Download complete", SHORT_A),
            ],
            {},
            1300,
            1000,
            (1300, True),
            id="podman-small-blob-without-count-uses-registry-size",
        ),
        pytest.param(
            [
                _msg("Pulling fs layer", SHORT_A),
                _msg("Pulling fs layer", SHORT_C),
                _msg("Download complete", SHORT_C),
                _msg("Download complete", SHORT_A),
            ],
            {LAYER_A: 1000, CONFIG: 300},
            None,
            1300,
            (1300, True),
            id="manifest-blob-sizes",
        ),
        pytest.param(
            [
                _msg("Already exists", SHORT_B),
                _msg("Pulling fs layer", SHORT_A),
                _msg("Download complete", SHORT_A),
            ],
            {},
            5000,
            0,
            (0, False),
            id="shared-layer-and-unknown-size-is-a-lower-bound",
        ),
        pytest.param(
            [
                _msg("Already exists", SHORT_B),
                _msg("Downloading", SHORT_A, 10, 1000),
                _msg("Download complete", SHORT_A),
            ],
            {},
            5000,
            1000,
            (1000, True),
            id="shared-layer-excluded",
        ),
        pytest.param(
            [
                _msg("Downloading", SHORT_A, 900, 1000),
                _msg("Downloading", SHORT_A, 400, 1000),
            ],
            {},
            None,
            900,
            (1000, True),  # a stream that ended without an error delivered every blob
            id="never-goes-backwards",
        ),
        pytest.param(
            [
                {"status": "Trying to pull 127.0.0.1:5000/a/b..."},
                {"status": "Digest: sha256:" + "d" * 64},
                _msg("Download complete", "not-a-blob-id"),
            ],
            {},
            None,
            0,
            (0, False),
            id="image-level-lines-ignored",
        ),
    ],
)
def test_progress_tracker_folds_the_pull_stream(
    messages: list[dict[str, Any]],
    blob_sizes: dict[str, int],
    expected_bytes: int | None,
    downloaded: int,
    final: tuple[int, bool],
) -> None:
    tracker = PullProgressTracker(blob_sizes)
    for message in messages:
        tracker.feed(message)
    assert tracker.downloaded_bytes == downloaded
    assert tracker.final_bytes(expected_bytes) == final


@pytest.mark.parametrize(
    ("message", "reason", "temporary"),
    [
        pytest.param(
            "reading manifest sha256:404404 in 127.0.0.1:5000/x: manifest unknown",
            "not_found",
            False,
            id="manifest-unknown",
        ),
        pytest.param("fetching blob: blob unknown to registry", "not_found", False, id="blob"),
        pytest.param(
            'failed to resolve reference "127.0.0.1:5000/a@sha256:...": not found',
            "not_found",
            False,
            id="containerd-not-found",
        ),
        pytest.param(
            "unauthorized: authentication required", "unauthorized", False, id="unauthorized"
        ),
        pytest.param(
            "requested access to the resource is denied", "unauthorized", False, id="denied"
        ),
        pytest.param(
            "dial tcp 127.0.0.1:5000: connect: connection refused",
            "network",
            True,
            id="refused",
        ),
        pytest.param("read: connection reset by peer", "network", True, id="reset"),
        pytest.param("unexpected EOF", "network", True, id="eof"),
        pytest.param(
            "received unexpected HTTP status: 503 Service Unavailable", "network", True, id="503"
        ),
        pytest.param("toomanyrequests: rate limit", "network", True, id="429"),
        pytest.param(
            # digests and ports contain "404", "500" …: they must not decide anything
            "layer sha256:5000404502503aaaaaaaaaaaa at 127.0.0.1:5000 is strange",
            "failed",
            True,
            id="digits-in-digests-and-ports",
        ),
        pytest.param("no space left on device", "failed", True, id="unknown-is-retried"),
    ],
)
def test_engine_errors_are_classified(message: str, reason: str, temporary: bool) -> None:
    assert classify_pull_error(message) == (reason, temporary)


def test_error_message_in_the_stream_raises_with_its_class() -> None:
    tracker = PullProgressTracker()
    with pytest.raises(ImagePullError) as caught:
        tracker.feed({"error": "x: manifest unknown", "errorDetail": {"message": "x"}})
    assert (caught.value.reason, caught.value.temporary) == ("not_found", False)


@pytest.mark.parametrize(
    ("stored", "size_bytes", "manifest_bytes", "expected"),
    [
        pytest.param(10_750, 10_000, 750, (10_000, True), id="manifest-bytes-known"),
        pytest.param(10_750, 10_000, 0, (10_000, True), id="registry-size-explains-it"),
        pytest.param(10_000, 10_000, 0, (10_000, True), id="equal"),
        pytest.param(9_000, 10_000, 0, (9_000, False), id="smaller-than-registry-says"),
        pytest.param(50_000_000, 10_000, 0, (50_000_000, False), id="far-larger"),
        pytest.param(10_750, None, 0, (10_750, False), id="nothing-known"),
    ],
)
def test_cri_stored_size_to_compressed_bytes(
    stored: int, size_bytes: int | None, manifest_bytes: int, expected: tuple[int, bool]
) -> None:
    target = PullTarget(
        name="127.0.0.1:5000/a/b",
        digest=LAYER_A,
        size_bytes=size_bytes,
        manifest_bytes=manifest_bytes,
    )
    assert stored_to_compressed_bytes(stored, target) == expected


PINNED = f"127.0.0.1:5000/org/app@{LAYER_A}"


@pytest.mark.parametrize(
    ("names", "foreign"),
    [
        pytest.param([PINNED], [], id="only-ours"),
        pytest.param([PINNED, f"127.0.0.1:5000/org/app@{LAYER_B}"], [], id="same-repo-digest"),
        pytest.param([PINNED, "127.0.0.1:5000/org/app:1"], ["127.0.0.1:5000/org/app:1"], id="tag"),
        pytest.param(
            [PINNED, f"127.0.0.1:5000/org/app-other@{LAYER_A}"],
            [f"127.0.0.1:5000/org/app-other@{LAYER_A}"],
            id="other-repo-with-common-prefix",
        ),
        pytest.param([PINNED, PINNED], [], id="duplicates"),
    ],
)
def test_foreign_names_protect_images_others_use(names: list[str], foreign: list[str]) -> None:
    assert foreign_names(names, PINNED) == foreign


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        pytest.param({"max_parallel_pulls": 0}, "agent.max_parallel_pulls", id="parallel"),
        pytest.param({"retries": -1}, "agent.retries", id="retries"),
        pytest.param(
            {"recheck_interval_seconds": 0.0}, "agent.recheck_interval_seconds", id="interval"
        ),
        pytest.param(
            {"stall_timeout_seconds": float("inf")}, "agent.stall_timeout_seconds", id="inf"
        ),
        pytest.param(
            {"pull_timeout_seconds": float("nan")}, "agent.pull_timeout_seconds", id="nan"
        ),
    ],
)
def test_bad_agent_settings_are_refused(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AgentSettings(pool="cpu", **changes)
    assert caught.value.key_path == key


async def test_invalid_pool_image_names_its_index() -> None:
    engine = open_engine(EngineKind.DOCKER, "/nonexistent.sock")
    async with RegistryClient() as client:
        with pytest.raises(ConfigError) as caught:
            NodeAgent(
                ["quay.io/ok/image:1", "quay.io/Not/Lower:1"],
                AgentSettings(pool="cpu"),
                resolver=client,
                engine=engine,
            )
    await engine.close()
    assert caught.value.key_path == "prepull.pools.cpu.images[1]"
    assert "lowercase" in str(caught.value) or "upper" in str(caught.value).lower()


def test_rate_is_measured_over_a_short_window() -> None:
    record = ImageRecord(image="quay.io/a/b:1", reference=parse("quay.io/a/b:1"))
    for second in range(10):
        record.record_progress(second * 1_000_000, 10_000_000, now=100.0 + second)
    assert record.rate_bytes_per_second == pytest.approx(1_000_000)
    # A stall shows within the window: no new bytes for six seconds.
    for second in range(10, 16):
        record.record_progress(9_000_000, 10_000_000, now=100.0 + second)
    assert record.rate_bytes_per_second == 0.0


def test_display_draws_one_line_per_image_with_bytes_rate_and_state() -> None:
    console = Console(record=True, width=160, force_terminal=True)
    pulling = ImageRecord(image="quay.io/a/b:1", reference=parse("quay.io/a/b:1"))
    pulling.state, pulling.bytes_done, pulling.bytes_total = ImageState.PULLING, 1_048_576, 4 << 20
    pulling.rate_bytes_per_second = 2_500_000
    failed = ImageRecord(image="docker.io/library/ubuntu:22.04", reference=parse("ubuntu:22.04"))
    failed.state, failed.last_error_reason = ImageState.FAILED, "stalled"
    present = ImageRecord(image="quay.io/c/d:2", reference=parse("quay.io/c/d:2"))
    present.state, present.size_bytes = ImageState.PRESENT, 3 << 20
    with ProgressDisplay(console) as display:
        display.refresh([pulling, failed, present])
    lines = [line for line in console.export_text().splitlines() if line.strip()][-3:]
    assert "quay.io/a/b:1" in lines[0]
    assert "1.0/4.0 MiB" in lines[0]
    assert "2.5 MB/s" in lines[0]
    assert "pulling" in lines[0]
    assert "ubuntu:22.04" in lines[1]
    assert "failed: stalled" in lines[1]
    assert "quay.io/c/d:2" in lines[2]
    assert "already present" in lines[2]
