"""The pre-pull controller: one DaemonSet per pool in the cluster, pinned to current digests.

What runs, in one process (``imagewarden prepull run``):

- four **watches** (Nodes, our Pods, Events of Pods, our DaemonSets), each split the way
  kopf splits it: :func:`infinite_watch` reconnects with backoff, :func:`continuous_watch`
  lists and then watches from the last ``resourceVersion`` (a 410 Gone sends it back to
  list again), :func:`watch_objs` reads one HTTP stream.  Every event goes, in order, to
  :class:`~imagewarden.prepull.coverage.Coverage`; a DaemonSet event also wakes the
  reconciler so that an edit or delete by someone else is undone at once;
- **leader election** on a ``coordination.k8s.io`` Lease (:class:`LeaderElector`): every
  replica watches and serves ``/status``, only the holder of the Lease writes;
- the **leader's loop**: re-resolve every tag (``RegistryClient.resolve``) each
  ``resolve_interval_seconds``, then :meth:`Controller.reconcile_once`: create missing
  DaemonSets, patch those whose :data:`~imagewarden.prepull.render.SPEC_HASH_ANNOTATION`
  differs (a moved tag changes the pinned digest, so the pool rolls), delete DaemonSets of
  pools that disappeared.  Only objects carrying our labels are ever touched;
- a small **aiohttp app**: ``/healthz``, ``/readyz``, ``/metrics``, ``/status``.

API errors back off and retry; :class:`asyncio.CancelledError` is always re-raised.
:data:`RBAC_RULES` lists exactly the API calls made here, for the Helm chart to mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.aiohttp import make_aiohttp_handler

from imagewarden.errors import ImagewardenError, LeaseLostError, WatchGoneError
from imagewarden.metrics import Metrics
from imagewarden.prepull.coverage import Coverage
from imagewarden.prepull.pools import PrepullConfig
from imagewarden.prepull.render import (
    COMPONENT,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SPEC_HASH_ANNOTATION,
    ResolvedImage,
    render_daemonset,
)
from imagewarden.reference import Reference, parse

__all__ = [
    "LEASE_NAME",
    "OUR_SELECTOR",
    "RBAC_RULES",
    "Controller",
    "ControllerSettings",
    "LeaderElector",
    "ReconcileResult",
    "WatchCursor",
    "WatchGoneError",
    "continuous_watch",
    "infinite_watch",
    "make_status_app",
    "placement_and_images",
    "watch_objs",
]

log = logging.getLogger(__name__)

LEASE_NAME: Final = "imagewarden-prepull"
"""The Lease replicas compete for (fixed, so that RBAC can name it)."""

OUR_SELECTOR: Final = (
    f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},app.kubernetes.io/component={COMPONENT}"
)
"""Label selector of every object this controller owns; nothing else is ever changed."""

JSON_PATCH: Final = "application/json-patch+json"
MAX_WATCH_LINE_BYTES: Final = 64 * 1024 * 1024
"""One watch event larger than this is refused (a Node with huge status is a few MiB)."""

RBAC_RULES: Final[Mapping[str, tuple[Mapping[str, Sequence[str]], ...]]] = {
    # Namespaced Role in the controller's namespace.
    "Role": (
        {
            "apiGroups": ["apps"],
            "resources": ["daemonsets"],
            "verbs": ["list", "watch", "create", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [LEASE_NAME],
            "verbs": ["get", "update"],
        },
    ),
    # ClusterRole: Nodes are cluster-scoped.
    "ClusterRole": ({"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},),
}
"""Exactly the verbs the controller uses: Role rules in its namespace, ClusterRole rules."""


class ResolutionLike(Protocol):
    """The part of :class:`imagewarden.registry.Resolution` the controller reads."""

    @property
    def digest(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...


class Resolver(Protocol):
    """What the controller needs from :class:`imagewarden.registry.RegistryClient`."""

    async def resolve(self, ref: Reference, *, platform: str = ...) -> ResolutionLike: ...


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller talks to the cluster; defaults suit a real cluster."""

    namespace: str
    """Where the DaemonSets, their pods and the Lease live."""

    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    """This replica's Lease holder identity (pod name plus a random suffix)."""

    lease_name: str = LEASE_NAME
    """Name of the Lease; RBAC names it, so change both together."""

    lease_duration_seconds: float = 15.0
    """A leader that has not renewed for this long is replaced (client-go's default)."""

    renew_interval_seconds: float = 5.0
    """How often the leader renews: a third of the duration leaves two tries to spare."""

    retry_interval_seconds: float = 2.0
    """How often a follower checks whether the Lease became free."""

    reconcile_interval_seconds: float = 60.0
    """Reconcile at least this often even without a watch event (a missed event heals)."""

    watch_timeout_seconds: int = 240
    """Server-side watch timeout; each stream ends after this and resumes from its version."""

    request_timeout_seconds: float = 30.0
    """Timeout of one non-watch API request."""

    max_backoff_seconds: float = 30.0
    """Upper bound of the delay between retries after API errors."""

    resolve_concurrency: int = 8
    """Registry resolutions in flight at once."""


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile pass changed (DaemonSet names)."""

    created: tuple[str, ...] = ()
    patched: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def backoff_seconds(attempt: int, *, maximum: float, base: float = 0.5) -> float:
    """Exponential delay with jitter (so replicas do not retry in step)."""
    if attempt <= 0:
        return 0.0
    delay: float = min(maximum, base * 2.0 ** min(attempt - 1, 20))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


# ---------------------------------------------------------------------------------------------
# Raw API calls: the typed clients with ``_preload_content=False``, so objects stay plain JSON.


def _api_error(status: int, reason: str | None, body: bytes) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = body[:4096]
    return error


async def api_json(
    call: Callable[..., Awaitable[Any]],
    *args: Any,
    timeout_seconds: float,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call a kubernetes_asyncio API method and return the decoded JSON body."""
    response = await call(*args, _preload_content=False, _request_timeout=timeout_seconds, **kwargs)
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        raise _api_error(response.status, response.reason, body)
    if not body:
        return {}
    decoded: dict[str, Any] = json.loads(body)
    return decoded


# ---------------------------------------------------------------------------------------------
# Watching, in three functions.


@dataclass
class WatchCursor:
    """Where a watch resumes; survives reconnects so that a dropped stream does not re-list."""

    resource_version: str | None = None
    """Last version seen; ``None`` means list first."""

    lists: int = 0
    """How many times the collection was listed (tests count re-lists)."""

    synced: bool = False
    """True once the first list has been delivered."""


OnSync = Callable[[list[dict[str, Any]]], None]
OnEvent = Callable[[str, dict[str, Any]], None]


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Newline-separated records of a streaming response, whatever their size."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
        if len(buffer) > MAX_WATCH_LINE_BYTES:
            raise ValueError(f"watch event larger than {MAX_WATCH_LINE_BYTES} bytes")
    if buffer.strip():
        yield buffer


async def watch_objs(
    list_call: Callable[..., Awaitable[Any]],
    *,
    resource_version: str,
    timeout_seconds: int,
    on_event: OnEvent,
) -> str:
    """Follow one watch stream from ``resource_version``; return the last version seen.

    Raises :class:`WatchGoneError` on 410 Gone and :class:`ApiException` on other errors.
    """
    response = await list_call(
        watch=True,
        resource_version=resource_version,
        timeout_seconds=timeout_seconds,
        allow_watch_bookmarks=True,
        _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(
            connect=10, sock_connect=10, sock_read=timeout_seconds + 30
        ),
    )
    try:
        if response.status == 410:
            raise WatchGoneError(f"resourceVersion {resource_version} is gone")
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, response.reason, await response.read())
        async for line in _lines(response):
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                code = obj.get("code")
                if code == 410:
                    raise WatchGoneError(obj.get("message") or "watch expired")
                raise _api_error(int(code or 500), obj.get("reason"), line)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                resource_version = version
            if kind != "BOOKMARK":
                on_event(str(kind), obj)
    finally:
        response.close()
    return resource_version


async def continuous_watch(
    list_call: Callable[..., Awaitable[Any]],
    cursor: WatchCursor,
    *,
    on_sync: OnSync,
    on_event: OnEvent,
    timeout_seconds: int,
    request_timeout_seconds: float,
) -> None:
    """List (unless the cursor can resume), then watch stream after stream; return on 410."""
    if cursor.resource_version is None:
        listing = await api_json(list_call, timeout_seconds=request_timeout_seconds)
        cursor.lists += 1
        on_sync(list(listing.get("items") or []))
        cursor.resource_version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        cursor.synced = True
    while True:
        try:
            cursor.resource_version = await watch_objs(
                list_call,
                resource_version=cursor.resource_version or "",
                timeout_seconds=timeout_seconds,
                on_event=on_event,
            )
        except WatchGoneError as gone:
            log.info("watch %s: %s; listing again", getattr(list_call, "__name__", "?"), gone)
            cursor.resource_version = None
            return


async def infinite_watch(
    list_call: Callable[..., Awaitable[Any]],
    *,
    name: str,
    on_sync: OnSync,
    on_event: OnEvent,
    timeout_seconds: int = 240,
    request_timeout_seconds: float = 30.0,
    max_backoff_seconds: float = 30.0,
    cursor: WatchCursor | None = None,
) -> None:
    """Keep a collection watched forever: reconnect with backoff, resume, re-list on 410."""
    cursor = cursor or WatchCursor()
    failures = 0
    while True:
        try:
            await continuous_watch(
                list_call,
                cursor,
                on_sync=on_sync,
                on_event=on_event,
                timeout_seconds=timeout_seconds,
                request_timeout_seconds=request_timeout_seconds,
            )
            failures = 0  # 410 Gone: list again at once
        except asyncio.CancelledError:
            raise
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            failures += 1
            delay = backoff_seconds(failures, maximum=max_backoff_seconds)
            log.warning(
                "watch %s failed (%s); retrying in %.1f s from version %s",
                name,
                _describe(error),
                delay,
                cursor.resource_version or "(list)",
            )
            await asyncio.sleep(delay)


def _describe(error: BaseException) -> str:
    """One line for logs and ``/status``: status, reason and the API's own message."""
    if not isinstance(error, ApiException):
        return f"{type(error).__name__}: {error}"
    body = error.body
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    detail = text[:300]
    with contextlib.suppress(ValueError, AttributeError):
        detail = str(json.loads(text).get("message") or detail)[:300]
    return f"{error.status} {error.reason}" + (f": {detail}" if detail else "")


# ---------------------------------------------------------------------------------------------
# Leader election on a coordination.k8s.io Lease.


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """client-go's algorithm: expiry is judged by our own clock since the record last changed.

    That way clock skew between replicas does not matter: a follower takes over only after
    it has seen the same holder/renewTime for longer than ``leaseDurationSeconds``.
    """

    def __init__(
        self,
        api: ApiClient,
        settings: ControllerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._leases = client.CoordinationV1Api(api)
        self._clock = clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime)
        self._observed_at = 0.0
        self.is_leader = False

    async def _get(self) -> dict[str, Any] | None:
        try:
            return await api_json(
                self._leases.read_namespaced_lease,
                self.settings.lease_name,
                self.settings.namespace,
                timeout_seconds=self.settings.request_timeout_seconds,
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _spec(self, transitions: int, acquire_time: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_seconds)),
            "acquireTime": acquire_time,
            "renewTime": _micro_time(),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        lease = await self._get()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.settings.lease_name,
                    "namespace": self.settings.namespace,
                    "labels": {
                        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                        "app.kubernetes.io/component": COMPONENT,
                    },
                },
                "spec": self._spec(0, _micro_time()),
            }
            try:
                await api_json(
                    self._leases.create_namespaced_lease,
                    self.settings.namespace,
                    body,
                    timeout_seconds=self.settings.request_timeout_seconds,
                )
            except ApiException as error:
                if error.status == 409:  # another replica created it first
                    return False
                raise
            self._set_leader(True)
            return True

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime") or ""))
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration_seconds)
        mine = holder == self.settings.identity
        expired = not holder or now - self._observed_at > duration
        if not mine and not expired:
            self._set_leader(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        acquire_time = str(spec.get("acquireTime") or "") if mine else _micro_time()
        updated = {**lease, "spec": self._spec(transitions, acquire_time or _micro_time())}
        try:
            await api_json(
                self._leases.replace_namespaced_lease,
                self.settings.lease_name,
                self.settings.namespace,
                updated,
                timeout_seconds=self.settings.request_timeout_seconds,
            )
        except ApiException as error:
            if error.status == 409:  # someone else wrote in between
                self._set_leader(False)
                return False
            raise
        self._observed = (self.settings.identity, updated["spec"]["renewTime"])
        self._observed_at = self._clock()
        self._set_leader(True)
        return True

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info(
                "%s %s the lease %s/%s",
                self.settings.identity,
                "acquired" if leader else "does not hold",
                self.settings.namespace,
                self.settings.lease_name,
            )
        self.is_leader = leader

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        failures = 0
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
                failures = 0
                delay = self.settings.retry_interval_seconds
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                failures += 1
                delay = backoff_seconds(failures, maximum=self.settings.max_backoff_seconds)
                log.warning("lease: %s; retrying in %.1f s", _describe(error), delay)
            await asyncio.sleep(delay)

    async def keep(self) -> None:
        """Renew until the Lease is lost; then raise :class:`LeaseLostError`."""
        last_renewed = self._clock()
        while True:
            await asyncio.sleep(self.settings.renew_interval_seconds)
            try:
                if not await self.try_acquire_or_renew():
                    raise LeaseLostError(f"lease taken over by {self._observed}")
                last_renewed = self._clock()
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                # Give up before a follower may take over (it waits a full duration).
                if self._clock() - last_renewed > self.settings.lease_duration_seconds * 2 / 3:
                    self._set_leader(False)
                    raise LeaseLostError(f"could not renew the lease: {_describe(error)}") from None
                log.warning("lease renewal failed (%s); retrying", _describe(error))

    async def release(self) -> None:
        """Hand the Lease back (empty holder) so a follower takes over without waiting."""
        if not self.is_leader:
            return
        self._set_leader(False)
        try:
            lease = await self._get()
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.settings.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await api_json(
                    self._leases.replace_namespaced_lease,
                    self.settings.lease_name,
                    self.settings.namespace,
                    lease,
                    timeout_seconds=5,
                )
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning(
                "could not hand the lease back (%s); it expires on its own", _describe(error)
            )


# ---------------------------------------------------------------------------------------------
# The controller.


class Controller:
    """Reconciles pools into DaemonSets and keeps :class:`Coverage` current.

    Creating one does no I/O; :meth:`run` starts everything and runs until cancelled.
    :meth:`resolve_once` and :meth:`reconcile_once` are the finite steps, usable alone.
    """

    def __init__(
        self,
        config: PrepullConfig,
        api: ApiClient,
        settings: ControllerSettings,
        *,
        resolver: Resolver | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = settings
        self.resolver = resolver
        self.metrics = metrics or Metrics()
        self.coverage = Coverage(config, self.metrics)
        self.elector = LeaderElector(api, settings, clock=clock)
        self.resolved: dict[tuple[str, str], ResolvedImage] = {}
        self.cursors: dict[str, WatchCursor] = {
            name: WatchCursor() for name in ("nodes", "pods", "events", "daemonsets")
        }
        self.last_reconcile: ReconcileResult | None = None
        self._api = api
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._clock = clock
        self._wake = asyncio.Event()
        self._gauges_dirty = asyncio.Event()

    # --- configuration and desired state --------------------------------------------------

    def set_config(self, config: PrepullConfig) -> None:
        """Adopt a new config; the next reconcile creates, patches and deletes to match."""
        self.config = config
        self.coverage.set_config(config)
        self.trigger()

    def trigger(self) -> None:
        """Ask for a reconcile now (no effect unless this replica leads)."""
        self._wake.set()

    def _platform(self, pool_name: str) -> str:
        return self.config.pools[pool_name].platform or self.config.platform

    def desired(self) -> list[dict[str, Any]]:
        """Every pool's DaemonSet as it should be, pinned to what was last resolved."""
        documents = []
        for name in sorted(self.config.pools):
            pool = self.config.pools[name]
            if not pool.images:
                continue
            platform = self._platform(name)
            mapping = {
                image: self.resolved[(image, platform)]
                for image in pool.images
                if (image, platform) in self.resolved
            }
            documents.append(
                render_daemonset(pool, self.config, mapping, namespace=self.settings.namespace)
            )
        return documents

    # --- resolution -----------------------------------------------------------------------

    async def resolve_once(self) -> bool:
        """Re-resolve every configured image; True when any digest changed (pools must roll)."""
        if self.resolver is None:
            return False
        resolver = self.resolver
        wanted = {
            (image, self._platform(name))
            for name, pool in self.config.pools.items()
            for image in pool.images
        }
        limit = asyncio.Semaphore(self.settings.resolve_concurrency)

        async def one(image: str, platform: str) -> tuple[ResolvedImage | None, str | None]:
            async with limit:
                try:
                    resolution = await resolver.resolve(parse(image), platform=platform)
                except (ImagewardenError, aiohttp.ClientError, OSError, TimeoutError) as error:
                    return None, str(error) or type(error).__name__
            return ResolvedImage(resolution.digest, resolution.size_bytes), None

        keys = sorted(wanted)
        answers = await asyncio.gather(*(one(image, platform) for image, platform in keys))
        changed = False
        for (image, platform), (resolved, error) in zip(keys, answers, strict=True):
            previous = self.resolved.get((image, platform))
            if resolved is not None:
                if previous is None or previous.digest != resolved.digest:
                    if previous is not None:
                        log.info("%s moved from %s to %s", image, previous.digest, resolved.digest)
                    changed = True
                self.resolved[(image, platform)] = resolved
            else:
                log.warning("cannot resolve %s for %s: %s", image, platform, error)
            for name, pool in self.config.pools.items():
                if image in pool.images and self._platform(name) == platform:
                    self.coverage.set_resolution(name, image, resolved or previous, error)
        for key in set(self.resolved) - wanted:
            del self.resolved[key]
        return changed

    # --- reconciliation -------------------------------------------------------------------

    async def reconcile_once(self) -> ReconcileResult:
        """Make our DaemonSets match :meth:`desired`; errors per object are collected."""
        timeout = self.settings.request_timeout_seconds
        namespace = self.settings.namespace
        listing = await api_json(
            self._apps.list_namespaced_daemon_set,
            namespace,
            label_selector=OUR_SELECTOR,
            timeout_seconds=timeout,
        )
        live = {item["metadata"]["name"]: item for item in listing.get("items") or []}
        created: list[str] = []
        patched: list[str] = []
        deleted: list[str] = []
        unchanged: list[str] = []
        errors: list[str] = []
        desired = {d["metadata"]["name"]: d for d in self.desired()}
        for name, want in desired.items():
            have = live.get(name)
            try:
                if have is None:
                    await api_json(
                        self._apps.create_namespaced_daemon_set,
                        namespace,
                        want,
                        timeout_seconds=timeout,
                    )
                    created.append(name)
                elif _annotation(have) != want["metadata"]["annotations"][
                    SPEC_HASH_ANNOTATION
                ] or _drifted(have, want):
                    await api_json(
                        self._apps.patch_namespaced_daemon_set,
                        name,
                        namespace,
                        _replace_patch(have, want),
                        _content_type=JSON_PATCH,
                        timeout_seconds=timeout,
                    )
                    patched.append(name)
                else:
                    unchanged.append(name)
            except ApiException as error:
                if error.status == 409 and have is None:
                    message = (
                        f"{namespace}/{name} exists but is not labelled {OUR_SELECTOR}; "
                        "it is left alone; delete or rename it to let imagewarden manage the pool"
                    )
                else:
                    message = f"{namespace}/{name}: {_describe(error)}"
                log.warning("reconcile: %s", message)
                errors.append(message)
        for name, have in live.items():
            if name in desired:
                continue
            try:
                await api_json(
                    self._apps.delete_namespaced_daemon_set,
                    name,
                    namespace,
                    body={
                        "propagationPolicy": "Background",
                        "preconditions": {"uid": have["metadata"]["uid"]},
                    },
                    timeout_seconds=timeout,
                )
                deleted.append(name)
            except ApiException as error:
                if error.status != 404:
                    errors.append(f"{namespace}/{name}: delete failed: {_describe(error)}")
        result = ReconcileResult(
            tuple(created), tuple(patched), tuple(deleted), tuple(unchanged), tuple(errors)
        )
        if created or patched or deleted:
            log.info("reconciled: created %s, patched %s, deleted %s", created, patched, deleted)
        self.last_reconcile = result
        return result

    # --- running --------------------------------------------------------------------------

    def _watch_specs(
        self,
    ) -> list[tuple[str, Callable[..., Awaitable[Any]], OnSync, OnEvent]]:
        namespace = self.settings.namespace
        coverage = self.coverage

        def bound(method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
            async def call(*more: Any, **options: Any) -> Any:
                return await method(*args, *more, **kwargs, **options)

            call.__name__ = getattr(method, "__name__", "list")
            return call

        def on_daemonset(kind: str, obj: dict[str, Any]) -> None:
            coverage.daemonset_event(kind, obj)
            self.trigger()  # someone (maybe we) changed one of ours: check it

        def on_events(items: list[dict[str, Any]]) -> None:
            for item in items:
                coverage.event_seen(item)

        return [
            ("nodes", bound(self._core.list_node), coverage.replace_nodes, coverage.node_event),
            (
                "pods",
                bound(self._core.list_namespaced_pod, namespace, label_selector=OUR_SELECTOR),
                coverage.replace_pods,
                coverage.pod_event,
            ),
            (
                "events",
                bound(
                    self._core.list_namespaced_event,
                    namespace,
                    field_selector="involvedObject.kind=Pod",
                ),
                on_events,
                lambda _kind, obj: coverage.event_seen(obj),
            ),
            (
                "daemonsets",
                bound(
                    self._apps.list_namespaced_daemon_set, namespace, label_selector=OUR_SELECTOR
                ),
                coverage.replace_daemonsets,
                on_daemonset,
            ),
        ]

    async def run(self) -> None:
        """Watch, elect, act and keep the gauges fresh until cancelled."""
        async with asyncio.TaskGroup() as group:
            for name, call, on_sync, on_event in self._watch_specs():
                group.create_task(
                    infinite_watch(
                        call,
                        name=name,
                        on_sync=self._mark_dirty_sync(on_sync),
                        on_event=self._mark_dirty(on_event),
                        timeout_seconds=self.settings.watch_timeout_seconds,
                        request_timeout_seconds=self.settings.request_timeout_seconds,
                        max_backoff_seconds=self.settings.max_backoff_seconds,
                        cursor=self.cursors[name],
                    ),
                    name=f"watch-{name}",
                )
            group.create_task(self._lead_forever(), name="lead")
            group.create_task(self._gauges_forever(), name="gauges")

    def _mark_dirty(self, handler: OnEvent) -> OnEvent:
        def handle(kind: str, obj: dict[str, Any]) -> None:
            handler(kind, obj)
            self._gauges_dirty.set()

        return handle

    def _mark_dirty_sync(self, handler: OnSync) -> OnSync:
        def handle(items: list[dict[str, Any]]) -> None:
            handler(items)
            self._gauges_dirty.set()

        return handle

    @property
    def synced(self) -> bool:
        """True once every watch has listed its collection at least once."""
        return all(cursor.synced for cursor in self.cursors.values())

    async def _gauges_forever(self) -> None:
        while True:
            await self._gauges_dirty.wait()
            self._gauges_dirty.clear()
            self.coverage.update_gauges()
            await asyncio.sleep(0.2)  # coalesce bursts of watch events

    async def _lead_forever(self) -> None:
        try:
            while True:
                await self.elector.acquire()
                self.coverage.leader = True
                acting = asyncio.create_task(self._act_forever(), name="act")
                keeping = asyncio.create_task(self.elector.keep(), name="keep-lease")
                try:
                    done, _ = await asyncio.wait(
                        {acting, keeping}, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        error = task.exception()
                        if error is not None and not isinstance(error, LeaseLostError):
                            raise error
                        log.warning("stopped acting: %s", error)
                finally:
                    self.coverage.leader = False
                    for task in (acting, keeping):
                        task.cancel()
                    await asyncio.gather(acting, keeping, return_exceptions=True)
        finally:
            await self.elector.release()

    async def _act_forever(self) -> None:
        next_resolve = 0.0
        failures = 0
        while True:
            self._wake.clear()
            now = self._clock()
            if self.resolver is not None and now >= next_resolve:
                await self.resolve_once()
                next_resolve = self._clock() + self.config.resolve_interval_seconds
            try:
                result = await self.reconcile_once()
                failures = failures + 1 if result.errors else 0
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
                failures += 1
                log.warning("reconcile failed: %s", _describe(error))
            if failures:
                delay = backoff_seconds(failures, maximum=self.settings.max_backoff_seconds)
                await asyncio.sleep(delay)
                continue
            wait = self.settings.reconcile_interval_seconds
            if self.resolver is not None:
                wait = min(wait, max(0.0, next_resolve - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            await asyncio.sleep(0.1)  # let a burst of watch events arrive before listing


def _annotation(daemonset: Mapping[str, Any]) -> str | None:
    annotations = (daemonset.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(SPEC_HASH_ANNOTATION)
    return str(value) if value is not None else None


def placement_and_images(daemonset: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a pod template that decide what is pulled where (kept by the API as sent)."""
    pod = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}

    def containers(key: str) -> list[tuple[Any, Any, Any]]:
        return [(c.get("name"), c.get("image"), c.get("command")) for c in pod.get(key) or []]

    return (
        containers("initContainers"),
        containers("containers"),
        pod.get("nodeSelector") or {},
        pod.get("tolerations") or [],
        pod.get("affinity") or {},
    )


def _drifted(have: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """True when someone edited what is pulled or where, leaving our hash annotation alone."""
    return placement_and_images(have) != placement_and_images(want)


def _replace_patch(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON Patch that replaces spec and our labels, guarded by the resourceVersion we saw.

    JSON Patch rather than a merge patch: a merge patch cannot drop a key that the new
    spec no longer has (a removed nodeSelector entry, affinity), a replace of ``/spec``
    can.  Other annotations (the DaemonSet controller's own) are kept.
    """
    escaped = SPEC_HASH_ANNOTATION.replace("~", "~0").replace("/", "~1")
    annotation_value = want["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    has_annotations = bool((have.get("metadata") or {}).get("annotations"))
    annotation_op: dict[str, Any] = (
        {"op": "add", "path": f"/metadata/annotations/{escaped}", "value": annotation_value}
        if has_annotations
        else {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {SPEC_HASH_ANNOTATION: annotation_value},
        }
    )
    return [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": have["metadata"]["resourceVersion"],
        },
        {"op": "replace", "path": "/spec", "value": want["spec"]},
        {"op": "replace", "path": "/metadata/labels", "value": want["metadata"]["labels"]},
        annotation_op,
    ]


# ---------------------------------------------------------------------------------------------
# HTTP: /healthz, /readyz, /metrics, /status.

CONTROLLER_KEY: Final = web.AppKey("controller", Controller)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER_KEY]
    if controller.synced:
        return web.Response(text="ok\n")
    waiting = sorted(name for name, c in controller.cursors.items() if not c.synced)
    return web.Response(status=503, text=f"waiting for the first list of: {', '.join(waiting)}\n")


async def _status(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER_KEY]
    document = controller.coverage.snapshot()
    document["identity"] = controller.settings.identity
    document["namespace"] = controller.settings.namespace
    document["synced"] = controller.synced
    last = controller.last_reconcile
    document["last_reconcile_errors"] = list(last.errors) if last else []
    return web.json_response(document, dumps=lambda value: json.dumps(value, indent=2))


def make_status_app(controller: Controller) -> web.Application:
    """The controller's small HTTP app (the controller itself runs beside it)."""
    app = web.Application()
    app[CONTROLLER_KEY] = controller
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(controller.metrics.registry))
    app.router.add_get("/status", _status)
    return app
