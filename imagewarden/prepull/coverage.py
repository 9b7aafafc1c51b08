"""Coverage: which node of which pool holds which image, and how long the pulls took.

The controller feeds this module what its watches see, as plain API dicts:

- **DaemonSets** (ours): the images each pool currently pulls, in the pinned form the pods
  name (``name@digest``), read from the init containers so that every replica, leader or
  not, reports the same thing after a restart;
- **Pods** (ours): which nodes belong to a pool (the DaemonSet controller made one pod per
  eligible node) and which init containers finished there;
- **Nodes**: ``status.images``, what each kubelet says its runtime holds (the kubelet keeps
  at most 50 images there, so finished init containers count as well);
- **Events** of our pods: the kubelet's ``Pulling``, ``Pulled`` (duration, size),
  ``Failed`` and ``BackOff``, which become metrics and the "last pull"/"last error" columns.

Everything here is synchronous and free of I/O; :meth:`Coverage.snapshot` is the ``/status``
JSON and :meth:`Coverage.update_gauges` refreshes the pre-pull gauges of
:class:`~imagewarden.metrics.Metrics`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from imagewarden.metrics import Metrics
from imagewarden.prepull.pools import PrepullConfig
from imagewarden.prepull.render import (
    DAEMONSET_PREFIX,
    POOL_LABEL,
    ResolvedImage,
    container_name,
    daemonset_name,
    pull_targets,
)
from imagewarden.reference import InvalidReference, parse

__all__ = [
    "Coverage",
    "PullEvent",
    "parse_go_duration",
    "parse_pull_event",
]

Obj = Mapping[str, Any]
"""A Kubernetes object as the API's JSON decodes it."""

PullKind = Literal["pulling", "pulled", "present", "failed", "backoff"]
NodeState = Literal["present", "pulling", "failed", "waiting"]

MAX_TRACKED_EVENTS: Final = 20_000
"""Events remembered (uid → count) so a re-list or a count bump is not counted twice."""

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_QUOTED_IMAGE = re.compile(r'image "([^"]{1,1024})"')
_PULLED = re.compile(
    r'^Successfully pulled image "(?P<image>[^"]{1,1024})" in (?P<duration>[0-9.a-zµμ]{1,40})'
    r"(?: \((?P<total>[0-9.a-zµμ]{1,40}) including waiting\))?"
    r"(?:\. Image size: (?P<size>\d{1,20}) bytes)?\.?$"
)
_FIELD_PATH = re.compile(r"^spec\.(?:initContainers|containers)\{(?P<name>[^}]{1,253})\}$")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.Duration`` string (``1.5s``, ``2m3.5s``, ``812ms``, ``0s``)."""
    if text == "0":
        return 0.0
    position, seconds = 0, 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(f"not a Go duration: {text[:60]!r}")
    return seconds


@dataclass(frozen=True)
class PullEvent:
    """What one kubelet event says about an image pull."""

    kind: PullKind
    """``pulling``, ``pulled`` (done), ``present`` (already there), ``failed``, ``backoff``."""

    image: str | None
    """The image as the pod spec names it (quoted in the message), when the message has one."""

    duration_seconds: float | None = None
    """Pull time without waiting for other pulls (``Pulled`` only)."""

    size_bytes: int | None = None
    """Image size the kubelet reported (``Pulled``, newer kubelets only)."""

    error: str | None = None
    """The failure text (``Failed``/``BackOff``)."""


def parse_pull_event(reason: str, message: str) -> PullEvent | None:
    """Understand a kubelet event about pulling, or ``None`` for any other event."""
    quoted = _QUOTED_IMAGE.search(message)
    image = quoted.group(1) if quoted else None
    if reason == "Pulling":
        return PullEvent("pulling", image)
    if reason == "Pulled":
        if "already present on machine" in message:
            return PullEvent("present", image)
        match = _PULLED.match(message)
        if match is None:
            return PullEvent("pulled", image)
        try:
            duration: float | None = parse_go_duration(match.group("duration"))
        except ValueError:
            duration = None
        size = match.group("size")
        return PullEvent("pulled", match.group("image"), duration, int(size) if size else None)
    if reason == "Failed":
        # "Error: ErrImagePull" / "Error: ImagePullBackOff" repeat a failure already reported.
        if not message.startswith("Failed to pull image"):
            return None
        return PullEvent("failed", image, error=message[:1024])
    if reason == "BackOff" and "pulling image" in message:
        return PullEvent("backoff", image, error=message[:1024])
    return None


@dataclass
class _ImageState:
    """Per pool and configured image: what the status page shows."""

    image: str
    pull: str
    container: str
    size_bytes: int | None = None
    digest: str | None = None
    resolve_error: str | None = None
    last_pull_duration_seconds: float | None = None
    last_pull_node: str | None = None
    last_pull_at: float | None = None
    last_error: str | None = None
    last_error_node: str | None = None
    pulls: dict[str, int] = field(
        default_factory=lambda: {"success": 0, "failure": 0, "skipped": 0}
    )
    node_activity: dict[str, NodeState] = field(default_factory=dict)


@dataclass
class _PodInfo:
    pool: str
    node: str | None
    completed_images: frozenset[str]
    """Pinned images of init containers that terminated with exit code 0."""


class Coverage:
    """The controller's view of the cluster, fed by watches, read by ``/status`` and metrics."""

    def __init__(
        self,
        config: PrepullConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.leader = False
        self._nodes: dict[str, frozenset[str]] = {}
        self._node_ready: dict[str, bool] = {}
        self._pods: dict[str, _PodInfo] = {}
        self._daemonsets: dict[str, list[tuple[str, str]]] = {}  # pool -> [(container, pull)]
        self._images: dict[tuple[str, str], _ImageState] = {}
        self._event_counts: OrderedDict[str, int] = OrderedDict()
        self._container_images: dict[tuple[str, str], str] = {}
        self.set_config(config)

    # --- configuration --------------------------------------------------------------------

    def set_config(self, config: PrepullConfig) -> None:
        """Adopt a new config; images and pools no longer configured are forgotten."""
        for pool in set(self.config.pools) - set(config.pools):
            self._forget_pool_series(pool)
        self.config = config
        self._container_images = {
            (pool.name, container_name(image)): image
            for pool in config.pools.values()
            for image in pool.images
        }
        for pool in config.pools:
            for result in ("success", "failure", "skipped"):
                self.metrics.image_pulls_total.labels(pool=pool, result=result)
        wanted = set(self._container_images.values())
        self._images = {
            key: state
            for key, state in self._images.items()
            if key[0] in config.pools and key[1] in wanted
        }

    def _forget_pool_series(self, pool: str) -> None:
        """Drop a removed pool's series so dashboards do not show its last value forever."""
        families = (
            ((self.metrics.prepull_pool_nodes, self.metrics.prepull_pool_nodes_warm), ((pool,),)),
            ((self.metrics.image_pull_duration_seconds,), ((pool,),)),
            (
                (self.metrics.image_pulls_total,),
                tuple((pool, result) for result in ("success", "failure", "skipped")),
            ),
        )
        for metrics, label_sets in families:
            for metric in metrics:
                for labels in label_sets:
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels)

    def set_resolution(
        self,
        pool: str,
        image: str,
        resolved: ResolvedImage | None,
        error: str | None = None,
    ) -> None:
        """Record what the registry said (or why it could not say) for a pool's image."""
        state = self._state(pool, image)
        if resolved is not None:
            state.digest = resolved.digest
            if resolved.size_bytes is not None:
                state.size_bytes = resolved.size_bytes
        state.resolve_error = error

    # --- watch input ----------------------------------------------------------------------

    def replace_nodes(self, nodes: Iterable[Obj]) -> None:
        """A fresh list of Nodes (after a (re-)list): forget nodes that are gone."""
        self._nodes.clear()
        self._node_ready.clear()
        for node in nodes:
            self.node_event("ADDED", node)

    def node_event(self, kind: str, node: Obj) -> None:
        name = node["metadata"]["name"]
        if kind == "DELETED":
            self._nodes.pop(name, None)
            self._node_ready.pop(name, None)
            return
        status = node.get("status") or {}
        names: set[str] = set()
        for entry in status.get("images") or []:
            names.update(entry.get("names") or [])
        self._nodes[name] = frozenset(names)
        self._node_ready[name] = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )

    def replace_pods(self, pods: Iterable[Obj]) -> None:
        self._pods.clear()
        for pod in pods:
            self.pod_event("ADDED", pod)

    def pod_event(self, kind: str, pod: Obj) -> None:
        metadata = pod["metadata"]
        key = metadata["name"]
        pool = (metadata.get("labels") or {}).get(POOL_LABEL)
        if kind == "DELETED" or pool is None:
            self._pods.pop(key, None)
            return
        spec = pod.get("spec") or {}
        images = {c["name"]: c.get("image", "") for c in spec.get("initContainers") or []}
        completed = frozenset(
            images[status["name"]]
            for status in (pod.get("status") or {}).get("initContainerStatuses") or []
            if status.get("name") in images
            and ((status.get("state") or {}).get("terminated") or {}).get("exitCode") == 0
        )
        self._pods[key] = _PodInfo(pool, _pod_node(spec), completed)

    def replace_daemonsets(self, daemonsets: Iterable[Obj]) -> None:
        self._daemonsets.clear()
        for daemonset in daemonsets:
            self.daemonset_event("ADDED", daemonset)

    def daemonset_event(self, kind: str, daemonset: Obj) -> None:
        pool = (daemonset["metadata"].get("labels") or {}).get(POOL_LABEL)
        if pool is None:
            return
        if kind == "DELETED":
            self._daemonsets.pop(pool, None)
            return
        pod_spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
        self._daemonsets[pool] = [
            (c["name"], c.get("image", ""))
            for c in pod_spec.get("initContainers") or []
            if c.get("name", "").startswith("pull-")
        ]

    def event_seen(self, event: Obj) -> None:
        """Account for a kubelet event once per occurrence (``count`` bumps are occurrences)."""
        involved = event.get("involvedObject") or {}
        pod_name = involved.get("name") or ""
        if involved.get("kind") != "Pod" or not pod_name.startswith(DAEMONSET_PREFIX):
            return
        parsed = parse_pull_event(event.get("reason") or "", event.get("message") or "")
        if parsed is None:
            return
        uid = (event.get("metadata") or {}).get("uid") or (event.get("metadata") or {}).get("name")
        count = int(event.get("count") or 1)
        previous = self._event_counts.pop(uid, 0) if uid else 0
        if uid:
            self._event_counts[uid] = max(count, previous)
            while len(self._event_counts) > MAX_TRACKED_EVENTS:
                self._event_counts.popitem(last=False)
        occurrences = count - previous
        if occurrences <= 0:
            return
        pod = self._pods.get(pod_name)
        pool = pod.pool if pod else _pool_from_pod_name(pod_name)
        if pool not in self.config.pools:
            return
        image = self._configured_image(pool, involved.get("fieldPath") or "", parsed.image)
        if image is None:
            return
        node = (event.get("source") or {}).get("host") or (pod.node if pod else None) or "?"
        state = self._state(pool, image)
        if parsed.kind == "pulling":
            state.node_activity[node] = "pulling"
        elif parsed.kind == "pulled":
            state.node_activity.pop(node, None)
            state.pulls["success"] += occurrences
            self.metrics.image_pulls_total.labels(pool=pool, result="success").inc(occurrences)
            if parsed.duration_seconds is not None:
                for _ in range(occurrences):
                    self.metrics.image_pull_duration_seconds.labels(pool=pool).observe(
                        parsed.duration_seconds
                    )
                state.last_pull_duration_seconds = parsed.duration_seconds
                state.last_pull_node = node
                state.last_pull_at = self.clock()
            if parsed.size_bytes:
                state.size_bytes = parsed.size_bytes
        elif parsed.kind == "present":
            state.node_activity.pop(node, None)
            state.pulls["skipped"] += occurrences
            self.metrics.image_pulls_total.labels(pool=pool, result="skipped").inc(occurrences)
        else:
            state.node_activity[node] = "failed"
            state.last_error = parsed.error
            state.last_error_node = node
            if parsed.kind == "failed":
                state.pulls["failure"] += occurrences
                self.metrics.image_pulls_total.labels(pool=pool, result="failure").inc(occurrences)

    # --- output ---------------------------------------------------------------------------

    def pool_nodes(self, pool: str) -> list[str]:
        """Nodes the pool's DaemonSet placed a pod on (that still exist), sorted."""
        nodes = {p.node for p in self._pods.values() if p.pool == pool and p.node}
        if self._nodes:
            nodes &= set(self._nodes)
        return sorted(n for n in nodes if n is not None)

    def targets(self, pool: str) -> list[tuple[str, str, str]]:
        """(configured image, pinned pull, container) in pull order, from the live DaemonSet."""
        live = self._daemonsets.get(pool)
        if live is None:
            config_pool = self.config.pools.get(pool)
            if config_pool is None:
                return []
            return [(t.image, t.pull, t.container) for t in pull_targets(config_pool)]
        result = []
        for container, pull in live:
            image = self._container_images.get((pool, container), pull)
            result.append((image, pull, container))
        return result

    def node_has(
        self, node: str, pull: str, completed: Mapping[str, set[str]] | None = None
    ) -> bool:
        """Whether ``node`` holds ``pull``: listed in its status, or an init container ran it."""
        names = self._nodes.get(node, frozenset())
        if pull in names or any(alias in names for alias in _aliases(pull)):
            return True
        completed = self._completed_by_node() if completed is None else completed
        return pull in completed.get(node, ())

    def update_gauges(self) -> None:
        completed = self._completed_by_node()
        for pool in self.config.pools:
            nodes = self.pool_nodes(pool)
            pulls = [pull for _, pull, _ in self.targets(pool)]
            warm = sum(1 for node in nodes if all(self.node_has(node, p, completed) for p in pulls))
            self.metrics.prepull_pool_nodes.labels(pool=pool).set(len(nodes))
            self.metrics.prepull_pool_nodes_warm.labels(pool=pool).set(warm)

    def snapshot(self) -> dict[str, Any]:
        """The ``/status`` document: pool → images → nodes warm/total, last pull, last error."""
        pools: dict[str, Any] = {}
        completed = self._completed_by_node()
        for pool in sorted(self.config.pools):
            nodes = self.pool_nodes(pool)
            images = []
            warm_nodes = set(nodes)
            for image, pull, container in self.targets(pool):
                state = self._state(pool, image)
                per_node: dict[str, NodeState] = {}
                for node in nodes:
                    if self.node_has(node, pull, completed):
                        per_node[node] = "present"
                    else:
                        per_node[node] = state.node_activity.get(node, "waiting")
                        warm_nodes.discard(node)
                images.append(
                    {
                        "image": image,
                        "pull": pull,
                        "container": container,
                        "digest": pull.partition("@")[2] or state.digest,
                        "size_bytes": state.size_bytes,
                        "nodes_warm": sum(1 for s in per_node.values() if s == "present"),
                        "nodes_total": len(nodes),
                        "nodes": per_node,
                        "pulls": dict(state.pulls),
                        "last_pull_duration_seconds": state.last_pull_duration_seconds,
                        "last_pull_node": state.last_pull_node,
                        "last_pull_at": state.last_pull_at,
                        "last_error": state.last_error,
                        "last_error_node": state.last_error_node,
                        "resolve_error": state.resolve_error,
                    }
                )
            pools[pool] = {
                "daemonset": daemonset_name(pool),
                "deployed": pool in self._daemonsets,
                "nodes_total": len(nodes),
                "nodes_warm": len(warm_nodes),
                "nodes": nodes,
                "images": images,
            }
        return {"leader": self.leader, "generated_at": self.clock(), "pools": pools}

    # --- internals ------------------------------------------------------------------------

    def _completed_by_node(self) -> dict[str, set[str]]:
        completed: dict[str, set[str]] = {}
        for pod in self._pods.values():
            if pod.node:
                completed.setdefault(pod.node, set()).update(pod.completed_images)
        return completed

    def _state(self, pool: str, image: str) -> _ImageState:
        key = (pool, image)
        state = self._images.get(key)
        if state is None:
            state = self._images[key] = _ImageState(image, image, container_name(image))
        return state

    def _configured_image(self, pool: str, field_path: str, quoted: str | None) -> str | None:
        match = _FIELD_PATH.match(field_path)
        if match:
            image = self._container_images.get((pool, match.group("name")))
            if image is not None:
                return image
        if quoted is None:
            return None
        for image, pull, _ in self.targets(pool):
            if quoted in (image, pull):
                return image
        return None


def _pod_node(spec: Obj) -> str | None:
    """``spec.nodeName``, or the node a DaemonSet pod is pinned to by its affinity."""
    node_name = spec.get("nodeName")
    if isinstance(node_name, str) and node_name:
        return node_name
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchFields") or []:
            values = expression.get("values") or []
            if expression.get("key") == "metadata.name" and len(values) == 1:
                return str(values[0])
    return None


def _pool_from_pod_name(pod_name: str) -> str:
    """``imagewarden-prepull-POOL-xxxxx`` → ``POOL`` (events may arrive before their pod)."""
    return pod_name.removeprefix(DAEMONSET_PREFIX).rpartition("-")[0]


def _aliases(pull: str) -> tuple[str, ...]:
    """Other names a node may list for ``pull``: ``:latest`` for a reference without a tag."""
    try:
        reference = parse(pull)
    except InvalidReference:
        return ()
    if reference.tag is None and reference.digest is None:
        return (f"{pull}:latest",)
    return ()
