"""parse → policy → resolve → :class:`Verdict`, with caching, single-flight and a time budget.

- Surrounding whitespace is stripped, then :func:`imagewarden.reference.parse` decides the
  grammar; a refused name never reaches the network (policy runs first).
- Answers are cached per (reference, platform): found tags for ``tag_ttl_seconds``, permanent
  misses for ``miss_ttl_seconds``, references pinned by digest until evicted (LRU). Temporary
  failures are never cached.
- Identical concurrent questions share one registry round trip (single-flight).
- When the registry fails, an answer younger than ``stale_if_error_seconds`` is served and marked
  stale; otherwise ``failure_mode`` decides, and the reason names the registry.
- Everything is bounded by ``timeout_seconds``.

The service (:mod:`imagewarden.service`), the hub hooks (:mod:`imagewarden.hub`) and the CLI call
:meth:`Checker.check`; anything that resolves references (:class:`Resolver`) can back it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from imagewarden._lru import LRUCache
from imagewarden.config import DEFAULT_SETTINGS, FailureMode, Settings
from imagewarden.errors import (
    CredentialsRefusedError,
    InvalidReference,
    InvalidRegistryResponseError,
    PlatformNotFoundError,
    RegistryError,
    RegistryUnreachableError,
    RepositoryNotFoundError,
    TagNotFoundError,
    UnsupportedManifestError,
)
from imagewarden.metrics import Metrics
from imagewarden.reference import Reference, canonicalize, parse

if TYPE_CHECKING:
    from imagewarden.registry.client import Resolution

log = logging.getLogger(__name__)

MAX_IMAGE_CHARS = 4096
"""Longer input is refused before parsing: no image reference is anywhere near this long."""


class Resolver(Protocol):
    """Anything that can say what a node pulling ``ref`` gets (the registry client)."""

    async def resolve(self, ref: Reference, *, platform: str = "linux/amd64") -> Resolution: ...


@dataclass(frozen=True)
class Verdict:
    """The answer for one image string; :meth:`as_json` gives DESIGN.md contract 3's keys."""

    allowed: bool
    image: str
    """As given."""
    reason: str
    """One sentence for the person who typed it."""
    code: str
    """Reason class (a bounded set, see :data:`imagewarden.metrics.CHECK_REASONS`)."""
    reference: str | None = None
    digest: str | None = None
    pinned: str | None = None
    """``name@digest`` of what the pod must pull; None when not resolved."""
    platforms: tuple[str, ...] = ()
    size_bytes: int | None = None
    rule: str | None = None
    profile: str | None = None
    platform: str | None = None
    stale: bool = False
    """True when served from an older answer because the registry failed."""

    def as_json(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "image": self.image,
            "reference": self.reference,
            "pinned": self.pinned,
            "digest": self.digest,
            "reason": self.reason,
            "platforms": list(self.platforms),
            "size_bytes": self.size_bytes,
            "code": self.code,
            "rule": self.rule,
            "profile": self.profile,
            "platform": self.platform,
            "stale": self.stale,
        }


@dataclass
class _Entry:
    stored_at: float
    resolution: Resolution | None = None
    error: RegistryError | None = None
    immutable: bool = False


_ERROR_CODES: tuple[tuple[type[RegistryError], str], ...] = (
    (TagNotFoundError, "tag_missing"),
    (RepositoryNotFoundError, "not_found"),
    (CredentialsRefusedError, "unauthorized"),
    (PlatformNotFoundError, "platform"),
    (UnsupportedManifestError, "unsupported_manifest"),
    (InvalidRegistryResponseError, "registry_error"),
)


def _error_code(error: RegistryError) -> str:
    for error_type, code in _ERROR_CODES:
        if isinstance(error, error_type):
            return code
    return "registry_error"


def _not_checked(ref: Reference, error: RegistryError) -> str:
    return f"{ref.familiar} could not be checked: {error}"


def _human_size(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size_bytes} bytes"


class Checker:
    """Decides on image strings; ``resolver=None`` checks grammar and policy only (offline)."""

    def __init__(
        self,
        settings: Settings = DEFAULT_SETTINGS,
        resolver: Resolver | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._cache: LRUCache[tuple[str, str], _Entry] = LRUCache(settings.checker.cache_entries)
        self._inflight: dict[tuple[str, str], asyncio.Task[_Entry]] = {}

    async def check(self, image: str, *, profile: str | None = None) -> Verdict:
        started = time.perf_counter()
        verdict = await self._check(image, profile)
        self.metrics.check_duration_seconds.observe(time.perf_counter() - started)
        self.metrics.checks_total.labels(
            result="allowed" if verdict.allowed else "refused", reason=verdict.code
        ).inc()
        log.info(
            "check %s profile=%s allowed=%s code=%s",
            verdict.reference or "<invalid>",
            profile,
            verdict.allowed,
            verdict.code,
        )
        return verdict

    async def _check(self, image: str, profile: str | None) -> Verdict:
        platform = self.settings.platform_for(profile)
        base = Verdict(False, image, reason="", code="", profile=profile, platform=platform)
        if len(image) > MAX_IMAGE_CHARS:
            return replace(
                base,
                reason=f"The image name is {len(image)} characters long, far more than any image "
                "reference; please paste only the image name, such as quay.io/org/name:tag.",
                code="invalid_reference",
            )
        try:
            ref = canonicalize(parse(image.strip()))
        except InvalidReference as error:
            return replace(base, reason=str(error), code="invalid_reference")
        decision = self.settings.policy.decide(ref, profile=profile)
        named = replace(base, reference=str(ref), rule=decision.rule)
        if not decision.allowed:
            return replace(named, reason=decision.reason, code="policy")
        if self.resolver is None:
            return replace(
                named,
                allowed=True,
                reason=f"{ref.familiar} is allowed by {decision.rule} (not looked up in the "
                "registry: offline check).",
                code="ok",
                digest=ref.digest,
                pinned=ref.pinned(ref.digest) if ref.digest else None,
            )
        try:
            resolution, stale = await self._resolve(ref, platform)
        except RegistryError as error:
            if error.temporary:
                return self._unavailable(ref, error, named)
            code = _error_code(error)
            # Only verdicts about the image itself name it; registry faults get the prefix.
            reason = str(error) if code != "registry_error" else _not_checked(ref, error)
            return replace(named, reason=reason, code=code)
        size = (
            f", {_human_size(resolution.size_bytes)} to download" if resolution.size_bytes else ""
        )
        reason = (
            f"{ref.familiar} is available for {platform}{size}; the server will run "
            f"{resolution.digest[:19]}…, the exact image that was checked."
        )
        if stale:
            reason = (
                f"{ref.familiar} was found earlier (the registry is not answering now); the "
                f"server will run {resolution.digest[:19]}…, as checked then."
            )
        return replace(
            named,
            allowed=True,
            reason=reason,
            code="stale" if stale else "ok",
            digest=resolution.digest,
            pinned=ref.pinned(resolution.digest),
            platforms=resolution.platforms,
            size_bytes=resolution.size_bytes,
            stale=stale,
        )

    def _unavailable(self, ref: Reference, error: RegistryError, named: Verdict) -> Verdict:
        if self.settings.checker.failure_mode is FailureMode.ALLOW:
            return replace(
                named,
                allowed=True,
                reason=f"{ref.familiar} could not be checked because {ref.domain} is not "
                "answering; it is allowed unchecked by the hub's settings.",
                code="failure_mode_allow",
            )
        return replace(
            named,
            reason=_not_checked(ref, error),
            code="registry_unavailable",
        )

    async def _resolve(self, ref: Reference, platform: str) -> tuple[Resolution, bool]:
        key = (str(ref), platform)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None and self._fresh(entry, now):
            self.metrics.cache_lookups_total.labels(result="hit").inc()
            return self._unwrap(entry), False
        task = self._inflight.get(key)
        if task is None:
            self.metrics.cache_lookups_total.labels(result="miss").inc()
            task = asyncio.create_task(self._fetch(key, ref, platform))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.metrics.cache_lookups_total.labels(result="coalesced").inc()
        try:
            async with asyncio.timeout(self.settings.checker.timeout_seconds):
                fetched = await asyncio.shield(task)
        except TimeoutError:
            fetched = _Entry(
                now,
                error=RegistryUnreachableError(
                    f"{ref.domain} did not answer within "
                    f"{self.settings.checker.timeout_seconds:g} seconds; try again in a minute.",
                    registry=ref.domain,
                    temporary=True,
                ),
            )
        if fetched.error is not None and fetched.error.temporary:
            stale = self._cache.get(key)
            limit = self.settings.checker.stale_if_error_seconds
            if stale and stale.resolution and self._clock() - stale.stored_at <= limit:
                self.metrics.cache_lookups_total.labels(result="stale").inc()
                log.warning("serving a stale answer for %s: %s", key[0], fetched.error)
                return stale.resolution, True
        return self._unwrap(fetched), False

    def _finished(self, key: tuple[str, str], task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned fetch never logs "never retrieved"

    async def _fetch(self, key: tuple[str, str], ref: Reference, platform: str) -> _Entry:
        from imagewarden.registry.client import deadline

        assert self.resolver is not None
        budget = self.settings.checker.timeout_seconds
        deadline.set(self._clock() + budget)
        try:
            async with asyncio.timeout(budget):
                resolution = await self.resolver.resolve(ref, platform=platform)
        except TimeoutError:
            return _Entry(
                self._clock(),
                error=RegistryUnreachableError(
                    f"{ref.domain} did not answer within {budget:g} seconds; "
                    "try again in a minute.",
                    registry=ref.domain,
                    temporary=True,
                ),
            )
        except RegistryError as error:
            entry = _Entry(self._clock(), error=error)
            if not error.temporary:
                self._cache.put(key, entry)
            return entry
        entry = _Entry(self._clock(), resolution=resolution, immutable=ref.digest is not None)
        self._cache.put(key, entry)
        return entry

    def _fresh(self, entry: _Entry, now: float) -> bool:
        if entry.error is not None:
            return now - entry.stored_at < self.settings.checker.miss_ttl_seconds
        return entry.immutable or now - entry.stored_at < self.settings.checker.tag_ttl_seconds

    @staticmethod
    def _unwrap(entry: _Entry) -> Resolution:
        if entry.error is not None:
            raise entry.error
        assert entry.resolution is not None
        return entry.resolution
