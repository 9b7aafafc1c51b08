"""Network faults between the checker and the real registry, one named test per fault.

A :class:`~tests.support.faultproxy.FaultProxy` sits between the checker and the real
``docker-registry`` (``open_registry``, seeded by ``seeded_images``) and breaks the exchange at
the TCP or HTTP level: refused and reset connections, bodies cut off or trickling at 1 byte/s,
5xx bursts, 429 storms with ``Retry-After``; DNS and TLS failures and a token service that is down
while the registry is up need no proxy. For each fault the test asserts

- the verdict (refused, ``registry_unavailable``; or a stale answer where one was cached),
- the sentence the user sees,
- that the check ended within the time budget, and
- that nothing wrong was cached: no entry for the reference while the fault lasted, and once the
  fault is gone the very next check asks the registry again and pins the right digest.

Each test prints one line (fault, verdict, seconds, reason); ``pytest -rP`` shows them.
Malformed answers that no proxy can make from a real registry (bad JSON, digest mismatch,
oversized manifests, redirect loops, garbage tokens, schema 1, hangs) are covered by
``tests/test_registry_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagewarden.checker import Checker, Verdict
from imagewarden.config import parse_settings
from imagewarden.metrics import Metrics
from imagewarden.registry import RegistryClient
from tests.support.faultproxy import FaultKind, FaultPlan, FaultProxy, self_signed_context
from tests.support.registry import RunningRegistry
from tests.support.registry_fixtures import SeededImages
from tests.support.tokenserver import TokenFault

BUDGET_SECONDS = 2.0
SLACK_SECONDS = 0.5
"""Scheduling slack on top of the budget on a busy 2-core CI machine."""
REPO = "pangeo/pangeo-notebook"
TAG = "2023.09.11"
IMAGE = f"quay.io/{REPO}:{TAG}"
KEY = (IMAGE, "linux/amd64")


class FakeClock:
    """Monotonic time the test moves by hand (to expire the tag TTL without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A checker whose quay.io is served through ``proxy``."""

    checker: Checker
    client: RegistryClient
    proxy: FaultProxy


@pytest.fixture(scope="module")
def proxy(open_registry: RunningRegistry, seeded_images: SeededImages) -> Iterator[FaultProxy]:
    """A pass-through proxy in front of the seeded open registry."""
    with FaultProxy(("127.0.0.1", open_registry.port), name="registry-fault-proxy") as running:
        yield running


def _settings(endpoint: str, **checker: Any) -> Any:
    return parse_settings(
        {
            "registries": {"quay.io": {"endpoint": endpoint}},
            "policy": {"allow": ["quay.io/**"]},
            "checker": {"timeout_seconds": BUDGET_SECONDS, **checker},
        }
    )


@pytest.fixture
async def rig(proxy: FaultProxy) -> AsyncIterator[Rig]:
    """A fresh client and checker (empty caches) for each test; the proxy back to normal."""
    proxy.clear()
    settings = _settings(proxy.url)
    metrics = Metrics()
    async with RegistryClient(settings, metrics=metrics) as client:
        yield Rig(Checker(settings, client, metrics=metrics), client, proxy)
    proxy.clear()


def _pinned(seeded_images: SeededImages, name: str = f"{REPO}:{TAG}") -> str:
    return f"quay.io/{name.partition(':')[0]}@{seeded_images[name]}"


async def _timed_check(checker: Checker, image: str = IMAGE) -> tuple[Verdict, float]:
    started = time.monotonic()
    verdict = await checker.check(image)
    return verdict, time.monotonic() - started


def _report(fault: str, verdict: Verdict, elapsed: float) -> None:
    shown = "allowed" if verdict.allowed else "refused"
    print(f"FAULT {fault:<34} {shown}/{verdict.code:<21} {elapsed:6.2f}s  {verdict.reason}")


def _assert_refused_in_budget(
    verdict: Verdict, elapsed: float, *, reason: str, code: str = "registry_unavailable"
) -> None:
    assert (verdict.allowed, verdict.code) == (False, code), verdict.reason
    assert reason in verdict.reason
    assert verdict.pinned is None
    assert elapsed < BUDGET_SECONDS + SLACK_SECONDS


def _assert_nothing_cached(checker: Checker, key: tuple[str, str] = KEY) -> None:
    """A temporary failure must leave no entry behind (neither an error nor a resolution)."""
    assert key not in checker._cache.entries


async def _settled(checker: Checker) -> None:
    """Wait until no registry round trip is in flight.

    A fetch that overran the budget ends a moment after the check that waited for it gave up;
    a check that started in that moment would share its fate (single-flight), which is right
    but not what a recovery check is meant to observe.
    """
    for _ in range(100):
        if not checker._inflight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fetches still in flight: {list(checker._inflight)}")


async def _assert_recovers(
    rig: Rig, seeded_images: SeededImages, image: str = IMAGE, name: str = f"{REPO}:{TAG}"
) -> None:
    """With the fault gone, the same checker asks the registry again and pins the right digest."""
    await _settled(rig.checker)
    heads_before = len(rig.proxy.requests_for(f"/manifests/{name.partition(':')[2]}"))
    verdict = await rig.checker.check(image)
    assert verdict.allowed, verdict.reason
    assert verdict.pinned == _pinned(seeded_images, name)
    assert len(rig.proxy.requests_for(f"/manifests/{name.partition(':')[2]}")) > heads_before


async def test_fault_connection_refused(rig: Rig, seeded_images: SeededImages) -> None:
    rig.proxy.refuse_connections()
    try:
        verdict, elapsed = await _timed_check(rig.checker)
    finally:
        rig.proxy.accept_connections()
    _report("connection refused", verdict, elapsed)
    _assert_refused_in_budget(
        verdict, elapsed, reason="quay.io could not be reached (connection refused)"
    )
    _assert_nothing_cached(rig.checker)
    await _assert_recovers(rig, seeded_images)


async def test_fault_reset_before_response(rig: Rig, seeded_images: SeededImages) -> None:
    with rig.proxy.inject(FaultPlan(FaultKind.RESET_BEFORE)) as plan:
        verdict, elapsed = await _timed_check(rig.checker)
    _report("reset before the response", verdict, elapsed)
    _assert_refused_in_budget(
        verdict, elapsed, reason="quay.io could not be reached (the connection broke off)"
    )
    assert plan.hits >= 1
    _assert_nothing_cached(rig.checker)
    await _assert_recovers(rig, seeded_images)


async def test_fault_garbage_instead_of_http(rig: Rig, seeded_images: SeededImages) -> None:
    with rig.proxy.inject(FaultPlan(FaultKind.GARBAGE)) as plan:
        verdict, elapsed = await _timed_check(rig.checker)
    _report("garbage instead of HTTP", verdict, elapsed)
    _assert_refused_in_budget(
        verdict, elapsed, reason="quay.io could not be reached (its answer was not HTTP)"
    )
    assert plan.hits == 1
    _assert_nothing_cached(rig.checker)
    await _assert_recovers(rig, seeded_images)


async def test_fault_reset_mid_body(rig: Rig, seeded_images: SeededImages) -> None:
    # HEAD carries no body and passes; the GET of the index by digest is cut in half.
    plan = FaultPlan(FaultKind.RESET_MID_BODY, methods=frozenset({"GET"}))
    with rig.proxy.inject(plan):
        verdict, elapsed = await _timed_check(rig.checker)
    _report("reset mid-body", verdict, elapsed)
    _assert_refused_in_budget(
        verdict, elapsed, reason="quay.io could not be reached (the connection broke off)"
    )
    assert plan.hits == 1
    _assert_nothing_cached(rig.checker)
    await _assert_recovers(rig, seeded_images)


async def test_fault_one_byte_per_second_body(rig: Rig, seeded_images: SeededImages) -> None:
    plan = FaultPlan(FaultKind.SLOW_BODY, bytes_per_second=1.0, methods=frozenset({"GET"}))
    with rig.proxy.inject(plan):
        verdict, elapsed = await _timed_check(rig.checker)
    _report("1 byte/s body", verdict, elapsed)
    _assert_refused_in_budget(
        verdict, elapsed, reason=f"quay.io did not answer within {BUDGET_SECONDS:g} seconds"
    )
    assert elapsed >= BUDGET_SECONDS - 0.1  # it waited for the body as long as allowed, no more
    _assert_nothing_cached(rig.checker)
    await _assert_recovers(rig, seeded_images)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_fault_5xx_burst(rig: Rig, seeded_images: SeededImages, status: int) -> None:
    burst = 3
    with rig.proxy.inject(FaultPlan(FaultKind.STATUS, status=status, count=burst)) as plan:
        results = [await _timed_check(rig.checker) for _ in range(burst)]
        # Every check during the burst asked the registry again: no failure was cached.
        assert plan.hits == burst
        _assert_nothing_cached(rig.checker)
        # The burst is over: the next check is answered, still inside the with block.
        await _assert_recovers(rig, seeded_images)
    for verdict, elapsed in results:
        _assert_refused_in_budget(verdict, elapsed, reason=f"quay.io answered {status}")
        assert "try again shortly" in verdict.reason
    _report(f"{status} burst of {burst}", *results[0])


async def test_fault_5xx_burst_serves_the_cached_answer_as_stale(
    proxy: FaultProxy, seeded_images: SeededImages
) -> None:
    clock = FakeClock()
    settings = _settings(proxy.url, tag_ttl_seconds=60, stale_if_error_seconds=600)
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client, clock=clock)
        fresh = await checker.check(IMAGE)
        assert fresh.allowed, fresh.reason
        clock.now += 61  # the tag TTL is over: the next check must ask the registry
        with proxy.inject(FaultPlan(FaultKind.STATUS, status=503)) as plan:
            verdict, elapsed = await _timed_check(checker)
        _report("503 with a cached answer", verdict, elapsed)
        assert plan.hits == 1
        assert (verdict.allowed, verdict.code, verdict.stale) == (True, "stale", True)
        assert verdict.pinned == fresh.pinned == _pinned(seeded_images)
        assert "the registry is not answering now" in verdict.reason
        # The stale answer was served, not re-stored as fresh: the next check asks again.
        assert checker._cache.entries[KEY].stored_at == clock.now - 61
        again = await checker.check(IMAGE)
        assert (again.allowed, again.stale, again.pinned) == (True, False, fresh.pinned)


async def test_fault_429_storm_with_retry_after(rig: Rig, seeded_images: SeededImages) -> None:
    names = [f"{REPO}:{tag}" for tag in ("2023.09.10", "2023.09.11", "2023.09.12", "latest")]
    names += ["jupyter/base-notebook:2024-01-15", "library/ubuntu:22.04", "docker/v2s2:1"]
    images = [f"quay.io/{name}" for name in names]
    storm = FaultPlan(FaultKind.STATUS, status=429, retry_after_seconds=1)
    with rig.proxy.inject(storm) as plan:
        started = time.monotonic()
        verdicts = await asyncio.gather(*(rig.checker.check(image) for image in images))
        elapsed = time.monotonic() - started
    _report(f"429 storm, {len(images)} images", verdicts[0], elapsed)
    for verdict in verdicts:
        _assert_refused_in_budget(verdict, elapsed, reason="quay.io is rate-limiting requests")
    # Retry-After: 1 was honoured once per image (a second wait would not fit the 2 s budget).
    assert plan.hits == 2 * len(images)
    assert elapsed >= 1.0
    for image in images:
        _assert_nothing_cached(rig.checker, (image, "linux/amd64"))
    after = await asyncio.gather(*(rig.checker.check(image) for image in images))
    assert [v.pinned for v in after] == [_pinned(seeded_images, name) for name in names]


async def test_fault_dns_failure(seeded_images: SeededImages) -> None:
    settings = _settings("http://nonexistent.invalid:5000")
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client)
        verdict, elapsed = await _timed_check(checker)
        _report("DNS failure", verdict, elapsed)
        _assert_refused_in_budget(
            verdict, elapsed, reason="quay.io could not be reached (its name does not resolve)"
        )
        _assert_nothing_cached(checker)


async def test_fault_tls_self_signed_certificate(
    open_registry: RunningRegistry, seeded_images: SeededImages, tmp_path: Path
) -> None:
    tls = self_signed_context(tmp_path / "tls")
    with FaultProxy(("127.0.0.1", open_registry.port), tls=tls, name="tls-proxy") as endpoint:
        settings = _settings(endpoint.url)
        async with RegistryClient(settings) as client:
            checker = Checker(settings, client)
            verdict, elapsed = await _timed_check(checker)
            _report("TLS self-signed certificate", verdict, elapsed)
            _assert_refused_in_budget(
                verdict,
                elapsed,
                reason="quay.io could not be reached (its TLS certificate is not trusted)",
            )
            _assert_nothing_cached(checker)
        # The client reached the endpoint, refused its certificate and sent no request over it.
        assert endpoint.accepted >= 1
        assert (endpoint.handshakes, endpoint.requests) == (0, [])


async def test_fault_tls_endpoint_that_speaks_plain_http(
    open_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    settings = _settings(open_registry.url.replace("http://", "https://"))
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client)
        verdict, elapsed = await _timed_check(checker)
    _report("https endpoint speaking plain HTTP", verdict, elapsed)
    _assert_refused_in_budget(
        verdict, elapsed, reason="quay.io could not be reached (the TLS handshake failed"
    )
    _assert_nothing_cached(checker)


async def test_fault_token_endpoint_down_while_registry_up(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    assert token_registry.token_server is not None
    settings = _settings(token_registry.url)
    since = len(token_registry.request_log())
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client)
        token_registry.token_server.fault = TokenFault.UNAVAILABLE
        try:
            verdict, elapsed = await _timed_check(checker)
        finally:
            token_registry.token_server.fault = TokenFault.NONE
        _report("token endpoint down", verdict, elapsed)
        _assert_refused_in_budget(
            verdict, elapsed, reason="the token service of quay.io answered 503; try again shortly"
        )
        # The registry itself was up and answered the anonymous HEAD with its challenge.
        assert [(r.method, r.status) for r in token_registry.request_log()[since:]] == [
            ("HEAD", 401)
        ]
        _assert_nothing_cached(checker)
        recovered = await checker.check(IMAGE)
        assert recovered.allowed, recovered.reason
        assert recovered.pinned == _pinned(seeded_images)
