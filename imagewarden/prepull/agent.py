"""The node agent: keep one pool's images on this node, pulled through its container engine.

``imagewarden agent --pool NAME`` reads the pool from the same config the controller uses,
resolves each image to a digest with :class:`~imagewarden.registry.RegistryClient`, and has
the node's engine (:mod:`imagewarden.prepull.engines`: Docker API or CRI) pull what is
missing — pinned to the digest, with the registry credentials passed per pull, at most
``max_parallel_pulls`` at a time, retrying temporary failures with exponential backoff. Every
``recheck_interval_seconds`` it resolves again and pulls the images whose tag moved. It never
removes an image it did not pull itself; with ``remove_replaced`` it removes the digests it
pulled once their tag moved on.

One round (:meth:`NodeAgent.run_round`) is the finite, testable unit; :meth:`NodeAgent.run`
repeats it. The agent serves, on its own port, ``/metrics`` (the ``agent_*`` and
``image_pull*`` families of :class:`~imagewarden.metrics.Metrics`), ``/status`` (per-image
JSON: digest, state, bytes, rate, last error) and ``/healthz``; in a terminal it draws one
progress bar per image (:mod:`imagewarden.prepull.agent_cli`, which also holds the command).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import functools
import json
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from imagewarden.errors import (
    ConfigError,
    EngineError,
    InvalidReference,
    RegistryError,
)
from imagewarden.metrics import Metrics
from imagewarden.prepull.engines import (
    Engine,
    EngineKind,
    PullOutcome,
    PullTarget,
)
from imagewarden.reference import Reference, parse

__all__ = [
    "AgentSettings",
    "ImageRecord",
    "ImageState",
    "NodeAgent",
    "Resolver",
    "RoundReport",
    "add_parser",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2

RATE_WINDOW_SECONDS = 5.0
"""Transfer rates are averaged over this window: long enough to smooth podman's one-second
progress steps, short enough to show a stall within seconds."""


class ResolutionLike(Protocol):
    """What the agent reads from :class:`imagewarden.registry.Resolution`."""

    @property
    def digest(self) -> str: ...

    @property
    def platform_digest(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...


class Resolver(Protocol):
    """Resolves references to digests and holds registry credentials (the RegistryClient)."""

    async def resolve(self, ref: Reference, *, platform: str = "linux/amd64") -> ResolutionLike:
        """Digest and compressed size of ``ref`` for ``platform``; raises RegistryError."""
        ...

    def credentials_for(self, host: str) -> tuple[str, str] | None:
        """(username, password) an engine should present to ``host``, if any."""
        ...


@dataclass(frozen=True)
class AgentSettings:
    """How the agent pulls; the pool itself comes from the config file."""

    pool: str
    """Name of the pre-pull pool (``prepull.pools.NAME``) whose images this node keeps."""
    engine: EngineKind = EngineKind.DOCKER
    """API of the node's container engine."""
    engine_address: str | None = None
    """Engine socket; ``None`` means the engine kind's default socket."""
    platform: str = "linux/amd64"
    """Platform the engine selects from multi-platform images (the pool's, else the config's)."""
    max_parallel_pulls: int = 2
    """Pulls running at once. Two keep a node's link busy while one pull is unpacking,
    without starving the user pods already running there."""
    recheck_interval_seconds: float = 300.0
    """Time between rounds that re-resolve every tag; five minutes, as the controller."""
    retries: int = 3
    """Extra attempts after a temporary failure (network, stall, engine restart)."""
    retry_base_seconds: float = 2.0
    """First backoff delay; doubled per attempt, with jitter, up to ``retry_max_seconds``."""
    retry_max_seconds: float = 60.0
    """Longest backoff delay between two attempts."""
    stall_timeout_seconds: float = 120.0
    """A pull that reports no progress for this long is cut and retried (Docker API only;
    podman reports at least once a second while bytes move)."""
    pull_timeout_seconds: float = 3600.0
    """Longest one pull attempt may take; 5-20 GB images over a slow link need tens of minutes."""
    remove_replaced: bool = False
    """Remove a digest the agent pulled once its tag has moved on (never anything else)."""
    listen_host: str = "127.0.0.1"
    """Address of the ``/metrics`` and ``/status`` endpoint."""
    listen_port: int | None = 9465
    """Port of that endpoint; 0 picks a free one, ``None`` serves nothing."""

    def __post_init__(self) -> None:
        if self.max_parallel_pulls < 1:
            raise ConfigError("agent.max_parallel_pulls", "must be at least 1")
        if self.retries < 0:
            raise ConfigError("agent.retries", "must not be negative")
        for name in ("recheck_interval_seconds", "stall_timeout_seconds", "pull_timeout_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"agent.{name}", f"must be a positive number, got {value!r}")


class ImageState(enum.Enum):
    """Where one wanted image stands on this node."""

    PENDING = "pending"
    """Not looked at yet."""
    UNRESOLVED = "unresolved"
    """The registry gave no digest (gone, private, unreachable); see ``last_error``."""
    PRESENT = "present"
    """The engine holds the wanted digest."""
    QUEUED = "queued"
    """Missing; waiting for a free pull slot."""
    PULLING = "pulling"
    """A pull is running."""
    RETRYING = "retrying"
    """The last attempt failed temporarily; waiting for the next one."""
    FAILED = "failed"
    """The pull failed permanently or ran out of attempts this round."""


@dataclass
class ImageRecord:
    """What the agent knows about one image of its pool (one entry of ``/status``)."""

    image: str
    """The reference as configured (normalized)."""
    reference: Reference
    """Parsed :attr:`image`."""
    state: ImageState = ImageState.PENDING
    digest: str | None = None
    """Digest the registry resolved most recently (the one the node should hold)."""
    platform_digest: str | None = None
    """Digest of the platform manifest inside :attr:`digest` (same for single-platform)."""
    size_bytes: int | None = None
    """Compressed size (config plus layers) of the platform's image, from the registry."""
    blob_sizes: dict[str, int] = field(default_factory=dict)
    """Digest -> size of config and layers, when the registry client reports them."""
    manifest_bytes: int = 0
    """Bytes of the index and platform manifest, when the registry client reports them."""
    bytes_done: int = 0
    """Bytes downloaded by the running (or last) pull."""
    bytes_total: int | None = None
    """Bytes the running (or last) pull has to download, when known."""
    rate_bytes_per_second: float = 0.0
    """Download rate of the running pull over the last few seconds."""
    attempts: int = 0
    """Pull attempts in the latest round that had to pull this image."""
    last_pull_seconds: float | None = None
    """Duration of the last successful pull."""
    last_pull_bytes: int | None = None
    """Compressed bytes the last successful pull downloaded."""
    last_pull_exact: bool = True
    """False when the engine could not tell every blob's size (a lower bound)."""
    last_pulled_at: float | None = None
    """Unix time of the last successful pull."""
    last_error: str | None = None
    """Most recent failure (registry or engine), for people; never contains credentials."""
    last_error_reason: str | None = None
    """Class of :attr:`last_error`: ``not_found``, ``unauthorized``, ``stalled``, …"""
    pulled_digests: list[str] = field(default_factory=list)
    """Digests of this image the agent itself pulled (only these may ever be removed)."""
    _samples: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def pinned(self) -> str | None:
        """``name@digest`` the node should hold."""
        return f"{self.reference.name}@{self.digest}" if self.digest else None

    def record_progress(self, done_bytes: int, total_bytes: int | None, now: float) -> None:
        """Take one progress report; keeps a short window of samples for the rate."""
        self.bytes_done = max(self.bytes_done, done_bytes)
        if total_bytes is not None:
            self.bytes_total = total_bytes
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.pop(0)
        first_time, first_bytes = self._samples[0]
        elapsed = now - first_time
        self.rate_bytes_per_second = (self.bytes_done - first_bytes) / elapsed if elapsed > 0 else 0

    def reset_progress(self) -> None:
        """Start counting a new pull attempt."""
        self.bytes_done = 0
        self.bytes_total = self.size_bytes
        self.rate_bytes_per_second = 0.0
        self._samples.clear()

    def as_json(self) -> dict[str, Any]:
        """The ``/status`` entry."""
        return {
            "image": self.image,
            "state": self.state.value,
            "present": self.state is ImageState.PRESENT,
            "digest": self.digest,
            "pinned": self.pinned,
            "platform_digest": self.platform_digest,
            "size_bytes": self.size_bytes,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate_bytes_per_second": round(self.rate_bytes_per_second, 1),
            "attempts": self.attempts,
            "last_pull_seconds": self.last_pull_seconds,
            "last_pull_bytes": self.last_pull_bytes,
            "last_pull_exact": self.last_pull_exact,
            "last_pulled_at": self.last_pulled_at,
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "pulled_digests": list(self.pulled_digests),
        }


@dataclass(frozen=True)
class RoundReport:
    """What one round did, for logs, tests and the ``--once`` exit code."""

    pulled: tuple[str, ...]
    """Pinned references pulled this round."""
    skipped: tuple[str, ...]
    """Pinned references already present (nothing to pull)."""
    failed: tuple[str, ...]
    """Images (as configured) that are not present after this round."""
    removed: tuple[str, ...]
    """Pinned references the agent removed because their tag moved on."""
    duration_seconds: float
    """Wall time of the round."""

    @property
    def complete(self) -> bool:
        """True when every wanted image is present."""
        return not self.failed


class ProgressView(Protocol):
    """Something that shows the records while pulls run (the terminal display)."""

    def refresh(self, records: Sequence[ImageRecord]) -> None:
        """Redraw from the current records; called a few times a second, must not block."""
        ...


class NodeAgent:
    """Keeps one pool's images on this node; see the module docstring."""

    def __init__(
        self,
        images: Sequence[str],
        settings: AgentSettings,
        *,
        resolver: Resolver,
        engine: Engine,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.records: list[ImageRecord] = []
        for index, image in enumerate(images):
            try:
                self.records.append(ImageRecord(image=image, reference=parse(image)))
            except InvalidReference as error:
                key_path = f"prepull.pools.{settings.pool}.images[{index}]"
                raise ConfigError(key_path, str(error)) from None
        self.engine_version: str | None = None
        self.rounds = 0
        self.round_running = False
        self.last_round: RoundReport | None = None
        self.last_round_finished_at: float | None = None
        self.started_at = time.time()
        self.view: ProgressView | None = None
        self.listen_port: int | None = None
        self._slots = asyncio.Semaphore(settings.max_parallel_pulls)
        self._stop = asyncio.Event()
        self._round_task: asyncio.Future[RoundReport] | None = None
        self._pull_locks: dict[str, asyncio.Lock] = {}
        self._runner: web.AppRunner | None = None
        self._active_pulls = 0
        self.max_active_pulls = 0
        """Highest number of pulls that ran at once (for tests and the bench)."""
        pool = settings.pool
        for result in ("success", "failure", "skipped"):
            self.metrics.image_pulls_total.labels(pool=pool, result=result)
        self.metrics.agent_pull_bytes_total.labels(pool=pool)
        self.metrics.agent_images_wanted.labels(pool=pool).set(len(self.records))
        self.metrics.agent_images_present.labels(pool=pool).set(0)

    # -- rounds ----------------------------------------------------------------------------

    async def run_round(self) -> RoundReport:
        """Resolve every image, pull what the node lacks, remove what the agent replaced."""
        started = time.monotonic()
        self.round_running = True
        self.rounds += 1
        pulled: list[str] = []
        skipped: list[str] = []
        removed: list[str] = []
        try:
            if self.engine_version is None:
                self.engine_version = await self.engine.version()
                log.info("engine: %s", self.engine_version)
            await asyncio.gather(*(self._resolve(record) for record in self.records))
            order = _InOrder(len(self.records))
            pulls = [
                self._ensure(record, order.turn(index), pulled, skipped, removed)
                for index, record in enumerate(self.records)
            ]
            await self._with_view(asyncio.gather(*pulls))
        finally:
            self.round_running = False
            self._update_gauges()
        report = RoundReport(
            pulled=tuple(pulled),
            skipped=tuple(skipped),
            failed=tuple(r.image for r in self.records if r.state is not ImageState.PRESENT),
            removed=tuple(removed),
            duration_seconds=time.monotonic() - started,
        )
        self.last_round = report
        self.last_round_finished_at = time.time()
        log.info(
            "round %d: %d pulled, %d already present, %d missing, %d removed in %.1fs",
            self.rounds,
            len(report.pulled),
            len(report.skipped),
            len(report.failed),
            len(report.removed),
            report.duration_seconds,
        )
        return report

    async def run_once(self) -> RoundReport | None:
        """One round that :meth:`stop` can interrupt; ``None`` when it was stopped."""
        if self._stop.is_set():
            return None
        self._round_task = asyncio.ensure_future(self.run_round())
        try:
            return await self._round_task
        except asyncio.CancelledError:
            if self._stop.is_set():
                return None
            raise
        finally:
            self._round_task = None

    async def run(self, *, on_round: Callable[[], None] | None = None) -> None:
        """Run rounds every ``recheck_interval_seconds`` until :meth:`stop`.

        A round that cannot reach the engine is logged and the next one tries again.
        ``on_round`` is called after every round (the CLI writes ``--status-file``).
        """
        while not self._stop.is_set():
            try:
                await self.run_once()
            except EngineError as error:
                log.warning("round %d could not use the engine: %s", self.rounds, error)
            if on_round is not None:
                on_round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.recheck_interval_seconds)

    def stop(self) -> None:
        """Stop: a running round is cancelled (engines abort their pulls) and run() returns."""
        self._stop.set()
        if self._round_task is not None:
            self._round_task.cancel()

    async def _resolve(self, record: ImageRecord) -> None:
        for attempt in range(self.settings.retries + 1):
            try:
                resolution = await self.resolver.resolve(
                    record.reference, platform=self.settings.platform
                )
                break
            except RegistryError as error:
                if error.temporary and attempt < self.settings.retries:
                    # A registry's passing 5xx or rate limit should not cost a whole interval.
                    log.info("%s: resolving failed temporarily: %s", record.image, error)
                    if await self._backoff(attempt):
                        continue
                record.last_error = str(error)
                record.last_error_reason = type(error).__name__
                # A registry that is down leaves the last digest standing (the node may hold
                # it); a definite answer (gone, refused) means there is nothing to pull.
                if record.digest is None or not error.temporary:
                    record.state = ImageState.UNRESOLVED
                log.warning("%s: cannot resolve: %s", record.image, error)
                return
        else:  # unreachable: the last attempt either breaks or returns
            return
        if record.digest is not None and resolution.digest != record.digest:
            log.info("%s moved: %s -> %s", record.image, record.digest[:19], resolution.digest[:19])
            record.attempts = 0
            record.state = ImageState.PENDING
        record.digest = resolution.digest
        record.platform_digest = resolution.platform_digest
        record.size_bytes = resolution.size_bytes
        # Optional, when the registry client reports them: exact per-blob progress and CRI sizes.
        record.blob_sizes = dict(getattr(resolution, "blob_sizes", None) or {})
        record.manifest_bytes = int(getattr(resolution, "manifest_size_bytes", 0) or 0)
        if record.state is ImageState.UNRESOLVED:
            record.state = ImageState.PENDING

    def _target(self, record: ImageRecord, digest: str) -> PullTarget:
        return PullTarget(
            name=record.reference.name,
            digest=digest,
            platform=self.settings.platform,
            credentials=self.resolver.credentials_for(record.reference.domain),
            size_bytes=record.size_bytes if digest == record.digest else None,
            blob_sizes=record.blob_sizes if digest == record.digest else {},
            manifest_bytes=record.manifest_bytes if digest == record.digest else 0,
        )

    async def _ensure(
        self,
        record: ImageRecord,
        turn: _Turn,
        pulled: list[str],
        skipped: list[str],
        removed: list[str],
    ) -> None:
        try:
            if record.digest is None or record.state is ImageState.UNRESOLVED:
                return
            target = self._target(record, record.digest)
            # Two tags of one image (``:latest`` and ``:2023.09.12``) resolve to one pinned
            # reference: the second waits for the first and then finds it present.
            lock = self._pull_locks.setdefault(target.pinned, asyncio.Lock())
            if lock.locked():
                turn.pass_on()  # waiting here must not hold up the images after this one
            async with lock:
                await self._ensure_locked(record, target, turn, pulled, skipped, removed)
        finally:
            turn.pass_on()

    async def _ensure_locked(
        self,
        record: ImageRecord,
        target: PullTarget,
        turn: _Turn,
        pulled: list[str],
        skipped: list[str],
        removed: list[str],
    ) -> None:
        try:
            present = await self.engine.has_image(target)
        except EngineError as error:
            self._fail(record, error)
            return
        if present:
            if record.state is not ImageState.PRESENT:
                self.metrics.image_pulls_total.labels(self.settings.pool, "skipped").inc()
                skipped.append(target.pinned)
            record.state = ImageState.PRESENT
            record.last_error = record.last_error_reason = None
        else:
            record.state = ImageState.QUEUED
            if await self._pull_with_retries(record, target, turn):
                pulled.append(target.pinned)
        if record.state is ImageState.PRESENT and self.settings.remove_replaced:
            removed.extend(await self._remove_replaced(record))

    async def _pull_with_retries(
        self, record: ImageRecord, target: PullTarget, turn: _Turn
    ) -> bool:
        pool = self.settings.pool
        record.attempts = 0
        await turn.wait()
        for attempt in range(self.settings.retries + 1):
            record.attempts += 1
            turn.pass_on()  # no await until the slot is queued for: slots go in pool order
            async with self._slots:
                record.state = ImageState.PULLING
                record.reset_progress()
                self._active_pulls += 1
                self.max_active_pulls = max(self.max_active_pulls, self._active_pulls)
                counted = [0]
                started = time.monotonic()
                try:
                    outcome = await self.engine.pull(
                        target, functools.partial(self._progress, record, counted)
                    )
                except EngineError as error:
                    self._fail(record, error)
                    temporary = error.temporary
                else:
                    self._succeed(record, target, outcome, counted, time.monotonic() - started)
                    return True
                finally:
                    self._active_pulls -= 1
            if not temporary or attempt == self.settings.retries:
                break
            record.state = ImageState.RETRYING
            log.warning(
                "%s failed temporarily (%s), attempt %d of %d",
                target.pinned,
                record.last_error_reason,
                attempt + 1,
                self.settings.retries + 1,
            )
            if not await self._backoff(attempt):
                break
        record.state = ImageState.FAILED
        self.metrics.image_pulls_total.labels(pool, "failure").inc()
        log.error("%s not pulled: %s", target.pinned, record.last_error)
        return False

    async def _backoff(self, attempt: int) -> bool:
        """Wait before retry number ``attempt + 1``; False when the agent is stopping."""
        delay = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2**attempt)
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    def _progress(
        self, record: ImageRecord, counted: list[int], done: int, total: int | None
    ) -> None:
        record.record_progress(done, total, time.monotonic())
        if record.bytes_done > counted[0]:
            # Count bytes as they arrive, so the counter moves during a long pull.
            self.metrics.agent_pull_bytes_total.labels(self.settings.pool).inc(
                record.bytes_done - counted[0]
            )
            counted[0] = record.bytes_done

    def _succeed(
        self,
        record: ImageRecord,
        target: PullTarget,
        outcome: PullOutcome,
        counted: list[int],
        seconds: float,
    ) -> None:
        pool = self.settings.pool
        if outcome.downloaded_bytes > counted[0]:
            self.metrics.agent_pull_bytes_total.labels(pool).inc(
                outcome.downloaded_bytes - counted[0]
            )
        record.bytes_done = record.last_pull_bytes = outcome.downloaded_bytes
        record.bytes_total = outcome.downloaded_bytes
        record.last_pull_exact = outcome.exact
        record.last_pull_seconds = round(seconds, 3)
        record.last_pulled_at = time.time()
        record.rate_bytes_per_second = outcome.downloaded_bytes / seconds if seconds > 0 else 0.0
        record.state = ImageState.PRESENT
        record.last_error = record.last_error_reason = None
        if target.digest not in record.pulled_digests:
            record.pulled_digests.append(target.digest)
        self.metrics.image_pulls_total.labels(pool, "success").inc()
        self.metrics.image_pull_duration_seconds.labels(pool).observe(seconds)
        log.info("pulled %s: %d bytes in %.1fs", target.pinned, outcome.downloaded_bytes, seconds)

    def _fail(self, record: ImageRecord, error: EngineError) -> None:
        record.last_error = str(error)
        record.last_error_reason = error.reason
        record.state = ImageState.FAILED

    async def _remove_replaced(self, record: ImageRecord) -> list[str]:
        """Remove digests of ``record`` the agent pulled and no wanted image still uses."""
        wanted = {(r.reference.name, r.digest) for r in self.records if r.digest}
        removed: list[str] = []
        for digest in list(record.pulled_digests):
            if (record.reference.name, digest) in wanted:
                continue
            target = self._target(record, digest)
            try:
                gone = await self.engine.remove(target)
            except EngineError as error:
                log.warning("could not remove replaced %s: %s", target.pinned, error)
                continue
            # Either way the agent stops owning it: kept means someone else uses it too.
            record.pulled_digests.remove(digest)
            if gone:
                removed.append(target.pinned)
                log.info("removed %s: %s moved on", target.pinned, record.image)
        return removed

    def _update_gauges(self) -> None:
        present = sum(1 for r in self.records if r.state is ImageState.PRESENT)
        self.metrics.agent_images_present.labels(self.settings.pool).set(present)
        self.metrics.agent_images_wanted.labels(self.settings.pool).set(len(self.records))

    async def _with_view(self, work: Any) -> None:
        """Await ``work`` while refreshing the progress view a few times a second."""
        if self.view is None:
            await work
            return
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                self._refresh_view()
                await asyncio.wait({task}, timeout=0.2)
            self._refresh_view()
            await task
        finally:
            if not task.done():
                task.cancel()

    def _refresh_view(self) -> None:
        if self.view is None:
            return
        try:
            self.view.refresh(self.records)
        except Exception:
            # A broken display must not stop pulls: drop it and say why once.
            log.exception("progress display failed; continuing without it")
            self.view = None

    # -- status and metrics endpoint -------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        present = sum(1 for r in self.records if r.state is ImageState.PRESENT)
        return {
            "pool": self.settings.pool,
            "engine": self.settings.engine.value,
            "engine_address": self.engine.address,
            "engine_version": self.engine_version,
            "platform": self.settings.platform,
            "max_parallel_pulls": self.settings.max_parallel_pulls,
            "recheck_interval_seconds": self.settings.recheck_interval_seconds,
            "started_at": self.started_at,
            "rounds": self.rounds,
            "round_running": self.round_running,
            "last_round_finished_at": self.last_round_finished_at,
            "wanted": len(self.records),
            "present": present,
            "images": [record.as_json() for record in self.records],
        }

    def make_app(self) -> web.Application:
        """The aiohttp app serving ``/metrics``, ``/status`` and ``/healthz``."""
        app = web.Application()
        app[STATUS_KEY] = self
        app.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        app.router.add_get("/status", _status_handler)
        app.router.add_get("/healthz", _healthz_handler)
        return app

    async def start_server(self) -> None:
        """Serve the endpoint on ``listen_host:listen_port`` (no-op when the port is None)."""
        if self.settings.listen_port is None:
            return
        listener = socket.create_server((self.settings.listen_host, self.settings.listen_port))
        self.listen_port = int(listener.getsockname()[1])
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()
        log.info(
            "serving /metrics and /status on %s:%s", self.settings.listen_host, self.listen_port
        )

    async def close(self) -> None:
        """Stop the endpoint and release the engine."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.engine.close()


STATUS_KEY = web.AppKey("agent", NodeAgent)


class _Turn:
    """One image's place in :class:`_InOrder`."""

    def __init__(self, previous: asyncio.Event | None, own: asyncio.Event) -> None:
        self._previous, self._own = previous, own

    async def wait(self) -> None:
        """Until every image before this one has queued for a slot or needs none."""
        if self._previous is not None:
            await self._previous.wait()

    def pass_on(self) -> None:
        """Let the next image queue (idempotent)."""
        self._own.set()


class _InOrder:
    """Pull slots go in pool order (configured priority), although presence checks end in
    any order: each image queues for a slot only after the one before it did, or needed none.
    """

    def __init__(self, count: int) -> None:
        self._events = [asyncio.Event() for _ in range(count)]

    def turn(self, index: int) -> _Turn:
        return _Turn(self._events[index - 1] if index else None, self._events[index])


async def _status_handler(request: web.Request) -> web.Response:
    agent = request.app[STATUS_KEY]
    return web.json_response(agent.status(), dumps=lambda value: json.dumps(value, indent=2))


async def _healthz_handler(request: web.Request) -> web.Response:
    agent = request.app[STATUS_KEY]
    return web.json_response({"ok": True, "rounds": agent.rounds})


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``imagewarden agent`` (defined in :mod:`imagewarden.prepull.agent_cli`)."""
    from imagewarden.prepull.agent_cli import add_parser as add_agent_parser

    add_agent_parser(subparsers)
