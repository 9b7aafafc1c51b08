"""Malformed and hostile registry answers: each gives a clear verdict and caches nothing wrong."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from imagewarden.checker import Checker
from imagewarden.config import parse_settings
from imagewarden.metrics import Metrics
from imagewarden.registry import RegistryClient
from tests.support.faulty_registry import FaultyRegistry

BUDGET_SECONDS = 2.0


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyRegistry]:
    registry = FaultyRegistry().start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
async def checker(faulty: FaultyRegistry) -> AsyncIterator[Checker]:
    settings = parse_settings(
        {
            "registries": {"quay.io": {"endpoint": faulty.url}},
            "checker": {"timeout_seconds": BUDGET_SECONDS},
        }
    )
    metrics = Metrics()
    async with RegistryClient(settings, metrics=metrics) as client:
        yield Checker(settings, client, metrics=metrics)


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        pytest.param(
            "invalid-json", "registry_error", "is not valid JSON", id="invalid-json"
        ),
        pytest.param(
            "digest-mismatch",
            "registry_error",
            "does not match its digest",
            id="digest-header-does-not-match-body",
        ),
        pytest.param("huge", "registry_error", "over the 4194304-byte limit", id="20MiB"),
        pytest.param(
            "huge-chunked",
            "registry_error",
            "over the 4194304-byte limit",
            id="20MiB-chunked-without-length",
        ),
        pytest.param(
            "redirect-loop", "registry_unavailable", "more than 5 redirects", id="redirect-loop"
        ),
        pytest.param(
            "token-garbage",
            "registry_unavailable",
            "something that is not a token",
            id="token-endpoint-garbage",
        ),
        pytest.param(
            "schema1",
            "unsupported_manifest",
            "old Docker schema 1 manifest format",
            id="schema1",
        ),
        pytest.param(
            "rate-limited-long",
            "registry_unavailable",
            "is rate-limiting requests",
            id="429-retry-after-beyond-budget",
        ),
        pytest.param("server-error", "registry_unavailable", "answered 503", id="503"),
        pytest.param(
            "hang",
            "registry_unavailable",
            f"did not answer within {BUDGET_SECONDS:g} seconds",
            id="accepts-and-never-answers",
        ),
    ],
)
async def test_bad_answers_are_refused_with_a_reason(
    checker: Checker, fault: str, code: str, reason: str
) -> None:
    started = time.monotonic()
    verdict = await checker.check(f"quay.io/fault/{fault}:1")
    elapsed = time.monotonic() - started
    assert (verdict.allowed, verdict.code) == (False, code)
    assert reason in verdict.reason
    assert verdict.reason.count(f"quay.io/fault/{fault}") == 1, verdict.reason
    assert verdict.pinned is None
    assert elapsed < BUDGET_SECONDS + 0.5
    # Nothing wrong was cached: the same question goes to the registry again.
    again = await checker.check(f"quay.io/fault/{fault}:1")
    assert again.allowed is False
    assert ("quay.io/fault/" + fault + ":1", "linux/amd64") not in {
        key for key, entry in checker._cache.entries.items() if entry.resolution is not None
    }


async def test_429_with_retry_after_is_honoured_within_the_budget(
    checker: Checker, faulty: FaultyRegistry
) -> None:
    faulty.rate_limited_left = 1
    started = time.monotonic()
    verdict = await checker.check("quay.io/fault/rate-limited:1")
    assert verdict.allowed, verdict.reason
    assert 1.0 <= time.monotonic() - started < BUDGET_SECONDS
    remaining = checker.metrics.registry.get_sample_value(
        "imagewarden_registry_ratelimit_remaining", {"registry": "quay.io"}
    )
    assert remaining == 99


async def test_a_good_answer_from_the_same_server_is_allowed(checker: Checker) -> None:
    verdict = await checker.check("quay.io/fault/good:1")
    assert verdict.allowed, verdict.reason
    assert verdict.platforms == ("linux/amd64",)
    assert verdict.pinned is not None
    assert verdict.pinned.startswith("quay.io/fault/good@sha256:")
