"""Simulated kubelets: Node objects that pull their pods' images for real through containerd.

A :class:`SimulatedKubelet` does the API-facing part of a kubelet and nothing else:

* registers its Node (labels, taints, capacity, ``nodeInfo.architecture``), keeps the Ready
  condition and its Lease in ``kube-node-lease`` fresh;
* list-watches the pods bound to it (``spec.nodeName``), surviving API server restarts and
  410 Gone;
* for each pod: pulls every image (init containers in order, then containers) through its own
  containerd honouring ``imagePullPolicy``, ``imagePullSecrets`` and per-registry credentials,
  with the kubelet's Events (``Pulling``, ``Pulled`` with the real duration and size,
  ``Failed``, ``BackOff``, ``Created``, ``Started``) and status (init containers terminated with
  exit code 0, containers running, pod IP, conditions); image pulls on a node are serialized,
  as with the kubelet's default ``serializeImagePulls``;
* keeps ``node.status.images`` equal to what its containerd holds (names are repo digests then
  repo tags, as the kubelet writes them);
* completes graceful deletion (containers "stop", then a delete with grace period 0 and a UID
  precondition) and deletes its Node when removed.

No container process ever runs: "Started" only means the status says so.

Each node gets its own containerd (all under the pool's directory, sharing one registry hosts
directory), so nodes have independent image stores as real nodes do: a node added later starts
cold, and its pulls reach the registry. Nodes whose architecture is the machine's use the CRI
ImageService (exactly the kubelet's calls and image view); other architectures (arm64) use
``ctr images pull --platform`` and a view built from containerd's image records the way the
CRI builds it (see :class:`tests.support.containerd.CtrImageRuntime`).

:class:`SimulatedNodes` owns a set of kubelets and their containerds; the default layout
(:data:`DEFAULT_NODES`) has two CPU nodes, a tainted GPU node and an arm64 node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import platform
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.containerd import (
    Containerd,
    CriImageRuntime,
    CtrImageRuntime,
    ImagePullError,
    ImageRuntime,
    image_domain,
    start_containerd,
    wait_for_cri,
    write_registry_host,
)
from tests.support.kube import (
    KUBE_VERSION,
    NODE_LEASE_NAMESPACE,
    KubeCluster,
    api_client_from_kubeconfig,
)

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
MAX_IMAGES_IN_NODE_STATUS = 50
"""The kubelet's ``nodeStatusMaxImages`` default."""
MAX_NAMES_PER_IMAGE = 5
"""The kubelet keeps at most this many names per image in node status."""
GPU_TAINT_KEY = "nvidia.com/gpu"
NOT_READY_TAINT_KEY = "node.kubernetes.io/not-ready"

T = TypeVar("T")


def host_architecture() -> str:
    """This machine's architecture in Go/OCI spelling (``amd64``, ``arm64``)."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass(frozen=True)
class NodeSpec:
    """What a simulated node looks like to the API."""

    name: str
    """Node name (also ``kubernetes.io/hostname``)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels; the well-known os/arch/hostname labels are added."""
    taints: Sequence[Mapping[str, str]] = ()
    """Taints as the API spells them: ``{"key": …, "value": …, "effect": "NoSchedule"}``."""
    architecture: str = "amd64"
    """``nodeInfo.architecture`` and ``kubernetes.io/arch``; decides which platform is pulled."""
    capacity: Mapping[str, str] = field(
        default_factory=lambda: {"cpu": "4", "memory": "16Gi", "pods": "110"}
    )
    """Capacity (allocatable is the same)."""


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("cpu-1", labels={"imagewarden.test/pool": "cpu"}),
    NodeSpec("cpu-2", labels={"imagewarden.test/pool": "cpu"}),
    NodeSpec(
        "gpu-1",
        labels={
            "imagewarden.test/pool": "gpu",
            "cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
        },
        taints=({"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"},),
        capacity={"cpu": "8", "memory": "32Gi", "pods": "110", GPU_TAINT_KEY: "1"},
    ),
    NodeSpec("arm-1", labels={"imagewarden.test/pool": "arm"}, architecture="arm64"),
)
"""Two CPU nodes, a GPU node tainted ``nvidia.com/gpu=present:NoSchedule``, an arm64 node."""


@dataclass
class KubeletSettings:
    """Timings of the simulated kubelets (shorter than a real kubelet's so tests stay quick)."""

    heartbeat_seconds: float = 5.0
    """How often the Lease is renewed and the Ready condition's heartbeat refreshed."""
    lease_duration_seconds: int = 40
    """``spec.leaseDurationSeconds`` of the node Lease (the kubelet's default)."""
    pull_backoff_seconds: float = 2.0
    """First image pull back-off (the kubelet uses 10 s); doubles per failure."""
    max_pull_backoff_seconds: float = 20.0
    """Back-off ceiling (the kubelet uses 300 s)."""
    pod_resync_seconds: float = 1.0
    """Longest wait between syncs of a pod that still waits for an image."""
    container_stop_seconds: float = 0.2
    """How long "stopping" containers takes before a deleted pod is removed."""
    api_retry_seconds: float = 90.0
    """How long API calls are retried through connection errors (API server restarts)."""


@dataclass(frozen=True)
class PullRecord:
    """One image pull attempt a simulated kubelet made (for tests to inspect)."""

    pod: str
    """``namespace/name`` of the pod."""
    image: str
    """Image as written in the pod spec."""
    succeeded: bool
    """Whether the pull succeeded."""
    duration_seconds: float
    """Time the runtime spent pulling."""
    total_seconds: float
    """Including time spent waiting for the node's pull lock."""
    size_bytes: int
    """Image size the runtime reports (0 on failure)."""
    error: str = ""
    """Runtime error message on failure."""


# --- small helpers --------------------------------------------------------------------------


def now_rfc3339() -> str:
    """UTC now as the API's Time (second precision)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """UTC now as the API's MicroTime (Leases)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def go_duration(seconds: float) -> str:
    """``seconds`` truncated to milliseconds, printed like Go's ``time.Duration``.

    ``1.234s``, ``812ms``, ``2m3.5s``, ``0s``: the format of the kubelet's ``Pulled`` message.
    """
    milliseconds = int(seconds * 1000)
    if milliseconds == 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def pulled_message(image: str, pull_seconds: float, total_seconds: float, size_bytes: int) -> str:
    """The kubelet's ``Pulled`` event message for a pull that happened."""
    return (
        f'Successfully pulled image "{image}" in {go_duration(pull_seconds)} '
        f"({go_duration(total_seconds)} including waiting). Image size: {size_bytes} bytes."
    )


def default_pull_policy(image: str) -> str:
    """``Always`` for ``:latest`` or untagged images, else ``IfNotPresent`` (API defaulting)."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return error.status in (0, 429) or error.status >= 500
    return isinstance(error, aiohttp.ClientError | asyncio.TimeoutError | ConnectionError)


async def retry_api(call: Callable[[], Awaitable[T]], *, retry_seconds: float, what: str) -> T:
    """Run ``call``, retrying connection errors, 429 and 5xx (API server restarts) for a while."""
    deadline = time.monotonic() + retry_seconds
    delay = 0.1
    while True:
        try:
            return await call()
        except Exception as error:
            if not _transient(error) or time.monotonic() > deadline:
                raise
            log.debug("%s failed transiently (%s); retrying", what, error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def _docker_config_credentials(secret: Mapping[str, Any], host: str) -> list[tuple[str, str]]:
    """Credentials for ``host`` in a ``kubernetes.io/dockerconfigjson`` (or legacy) Secret."""
    data = secret.get("data") or {}
    raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
    if not raw:
        return []
    try:
        document = json.loads(base64.b64decode(raw))
    except (ValueError, json.JSONDecodeError):
        return []
    auths = document.get("auths", document) if isinstance(document, dict) else {}
    found = []
    for key, entry in auths.items():
        key_host = key.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if key_host in {"index.docker.io", "registry-1.docker.io"}:
            key_host = "docker.io"
        if key_host != host or not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if (not username or not password) and entry.get("auth"):
            decoded = base64.b64decode(entry["auth"]).decode(errors="replace")
            username, _, password = decoded.partition(":")
        if username and password:
            found.append((str(username), str(password)))
    return found


# --- the kubelet ----------------------------------------------------------------------------


@dataclass
class _ContainerState:
    name: str
    image: str
    init: bool
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    ready: bool = False
    started: bool = False
    image_id: str = ""
    container_id: str = ""

    def as_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "restartCount": 0,
            "state": self.state,
            "lastState": {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        if not self.init:
            status["started"] = self.started
        return status


class SimulatedKubelet:
    """One simulated node: Node object, Lease, and a pod worker per pod bound to it."""

    def __init__(
        self,
        kubeconfig_path: Path,
        spec: NodeSpec,
        runtime: ImageRuntime,
        *,
        index: int,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        settings: KubeletSettings | None = None,
    ) -> None:
        self.spec = spec
        """The node's shape."""
        self.runtime = runtime
        """Where images are pulled."""
        self.credentials: Mapping[str, tuple[str, str]] = (
            credentials if credentials is not None else {}
        )
        """Registry host -> (user, password), used when the pod has no matching pull secret."""
        self.settings = settings or KubeletSettings()
        self.pulls: list[PullRecord] = []
        """Every pull attempt, in order."""
        self.node_ip = f"192.0.2.{10 + index}"
        self.pod_cidr = f"10.244.{index}.0/24"
        self._index = index
        self._kubeconfig_path = kubeconfig_path
        self._api_context: contextlib.AbstractAsyncContextManager[ApiClient] | None = None
        self._api: ApiClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pod_workers: dict[str, asyncio.Task[None]] = {}
        self._terminating: set[str] = set()
        self._pull_lock = asyncio.Lock()
        self._pod_ip_counter = 1
        self._backoff: dict[tuple[str, str], tuple[float, float]] = {}
        self._events: dict[tuple[str, str, str, str], tuple[str, int]] = {}
        self._status_lock = asyncio.Lock()
        self._images_published: list[dict[str, Any]] | None = None
        self._started_at = now_rfc3339()

    @property
    def name(self) -> str:
        """Node name."""
        return self.spec.name

    @property
    def api(self) -> ApiClient:
        """This kubelet's ApiClient (valid between :meth:`start` and :meth:`stop`)."""
        if self._api is None:
            raise RuntimeError(f"kubelet {self.name} is not started")
        return self._api

    async def _retry(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_api(call, retry_seconds=self.settings.api_retry_seconds, what=what)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the Node and its Lease, publish status, start heartbeats and the pod watch."""
        self._api_context = api_client_from_kubeconfig(self._kubeconfig_path)
        self._api = await self._api_context.__aenter__()
        core = client.CoreV1Api(self.api)
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self.spec.architecture,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": self.spec.architecture,
            **self.spec.labels,
        }
        node = await core.create_node(
            {
                "metadata": {"name": self.name, "labels": labels},
                "spec": {
                    "taints": [dict(taint) for taint in self.spec.taints],
                    "podCIDR": self.pod_cidr,
                    "podCIDRs": [self.pod_cidr],
                },
            }
        )
        await self._publish_status(initial=True)
        await self._create_lease(node.metadata.uid)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat"),
            asyncio.create_task(self._watch_pods_loop(), name=f"{self.name}-pods"),
        ]

    async def stop(self, *, delete_node: bool = True) -> None:
        """Stop all loops and pod workers; delete the Node (and so its Lease) when asked."""
        tasks = [*self._tasks, *self._pod_workers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._pod_workers.clear()
        if self._api is not None:
            if delete_node:
                core = client.CoreV1Api(self.api)
                with contextlib.suppress(ApiException):
                    await self._retry(lambda: core.delete_node(self.name), "delete node")
            assert self._api_context is not None
            await self._api_context.__aexit__(None, None, None)
            self._api = None
        await self.runtime.close()

    async def wait_schedulable(self, timeout_seconds: float = 30.0) -> None:
        """Wait until the node is Ready and the not-ready taint is gone (pods can land)."""
        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + timeout_seconds
        while True:
            node = await core.read_node(self.name)
            taints = {taint.key for taint in node.spec.taints or []}
            if NOT_READY_TAINT_KEY not in taints:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name} still has taint {NOT_READY_TAINT_KEY}")
            await asyncio.sleep(0.2)

    # --- node status, lease, images -------------------------------------------------------

    def _node_conditions(self) -> list[dict[str, Any]]:
        now = now_rfc3339()
        healthy = [
            (
                "MemoryPressure",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ]
        conditions = [
            {
                "type": kind,
                "status": "False",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }
            for kind, reason, message in healthy
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }
        )
        return conditions

    async def _node_images(self) -> list[dict[str, Any]]:
        images = sorted(await self.runtime.list(), key=lambda image: -image.size_bytes)
        return [
            {"names": image.names[:MAX_NAMES_PER_IMAGE], "sizeBytes": image.size_bytes}
            for image in images[:MAX_IMAGES_IN_NODE_STATUS]
            if image.names
        ]

    async def _publish_status(self, *, initial: bool = False) -> None:
        if initial:
            self._started_at = now_rfc3339()
        status: dict[str, Any] = {"conditions": self._node_conditions()}
        if initial:
            status.update(
                capacity=dict(self.spec.capacity),
                allocatable=dict(self.spec.capacity),
                addresses=[
                    {"type": "InternalIP", "address": self.node_ip},
                    {"type": "Hostname", "address": self.name},
                ],
                daemonEndpoints={"kubeletEndpoint": {"Port": 10250}},
                nodeInfo={
                    "architecture": self.spec.architecture,
                    "operatingSystem": "linux",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": platform.release(),
                    "containerRuntimeVersion": "containerd://1.6.20",
                    "kubeletVersion": f"v{KUBE_VERSION}",
                    "kubeProxyVersion": f"v{KUBE_VERSION}",
                    "machineID": secrets.token_hex(16),
                    "systemUUID": secrets.token_hex(16),
                    "bootID": secrets.token_hex(16),
                },
            )
        status["images"] = await self._node_images()
        core = client.CoreV1Api(self.api)
        await self._retry(
            lambda: core.patch_node_status(
                self.name, {"status": status}, _content_type=MERGE_PATCH
            ),
            "patch node status",
        )
        self._images_published = status["images"]

    async def remove_image(self, image: str) -> None:
        """Delete an image from this node's runtime (as image GC would) and publish the change."""
        await self.runtime.remove(image)
        await self.sync_images()

    async def sync_images(self) -> list[dict[str, Any]]:
        """Publish ``status.images`` from the runtime now (it also happens after every pull)."""
        images = await self._node_images()
        if images != self._images_published:
            core = client.CoreV1Api(self.api)
            await self._retry(
                lambda: core.patch_node_status(
                    self.name, {"status": {"images": images}}, _content_type=MERGE_PATCH
                ),
                "patch node images",
            )
            self._images_published = images
        return images

    async def _create_lease(self, node_uid: str) -> None:
        coordination = client.CoordinationV1Api(self.api)
        body = {
            "metadata": {
                "name": self.name,
                "namespace": NODE_LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node_uid}
                ],
            },
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": self.settings.lease_duration_seconds,
                "renewTime": now_micro(),
            },
        }
        try:
            await coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)
        except ApiException as error:
            if error.status != 409:
                raise
            await coordination.replace_namespaced_lease(self.name, NODE_LEASE_NAMESPACE, body)

    async def _heartbeat_loop(self) -> None:
        coordination = client.CoordinationV1Api(self.api)
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await coordination.patch_namespaced_lease(
                    self.name,
                    NODE_LEASE_NAMESPACE,
                    {"spec": {"renewTime": now_micro()}},
                    _content_type=MERGE_PATCH,
                )
                await self._publish_status()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # keep beating through API server restarts
                log.debug("node %s heartbeat failed: %s", self.name, error)

    # --- pods -----------------------------------------------------------------------------

    async def _watch_pods_loop(self) -> None:
        """List then watch pods bound here; relist on 410 Gone or any stream failure."""
        core = client.CoreV1Api(self.api)
        selector = f"spec.nodeName={self.name}"
        while True:
            try:
                response = await core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False
                )
                listing = json.loads(await response.read())
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self._on_pod(pod, deleted=False)
                for uid in set(self._pod_workers) - seen:
                    self._forget(uid)
                resource_version = listing["metadata"]["resourceVersion"]
                while True:
                    stream = watch.Watch()
                    async with stream:
                        async for event in stream.stream(
                            core.list_pod_for_all_namespaces,
                            field_selector=selector,
                            resource_version=resource_version,
                            timeout_seconds=60,
                            allow_watch_bookmarks=True,
                        ):
                            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                                self._on_pod(
                                    event["raw_object"], deleted=event["type"] == "DELETED"
                                )
                        resource_version = stream.resource_version or resource_version
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("node %s pod watch restarts: %s", self.name, error)
                await asyncio.sleep(0.5)

    def _on_pod(self, pod: dict[str, Any], *, deleted: bool) -> None:
        uid = pod["metadata"]["uid"]
        if deleted:
            self._forget(uid)
            return
        if pod["metadata"].get("deletionTimestamp"):
            if uid not in self._terminating:
                self._terminating.add(uid)
                worker = self._pod_workers.pop(uid, None)
                if worker is not None:
                    worker.cancel()
                self._pod_workers[uid] = asyncio.create_task(
                    self._terminate_pod(pod, worker), name=f"{self.name}-terminate-{uid}"
                )
            return
        if uid not in self._pod_workers and pod.get("status", {}).get("phase") not in (
            "Succeeded",
            "Failed",
        ):
            self._pod_workers[uid] = asyncio.create_task(
                self._run_pod(pod), name=f"{self.name}-pod-{uid}"
            )

    def _forget(self, uid: str) -> None:
        worker = self._pod_workers.pop(uid, None)
        if worker is not None and uid not in self._terminating:
            worker.cancel()
        self._terminating.discard(uid)

    async def _event(
        self,
        pod: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        warning: bool = False,
        field_path: str = "",
    ) -> None:
        """Record an Event on the pod; a repeated event bumps ``count``, as the kubelet's do."""
        metadata = pod["metadata"]
        namespace = metadata["namespace"]
        core = client.CoreV1Api(self.api)
        key = (metadata["uid"], field_path, reason, message)
        now = now_rfc3339()
        try:
            if key in self._events:
                name, count = self._events[key]
                await self._retry(
                    lambda: core.patch_namespaced_event(
                        name,
                        namespace,
                        {"count": count + 1, "lastTimestamp": now},
                        _content_type=MERGE_PATCH,
                    ),
                    "patch event",
                )
                self._events[key] = (name, count + 1)
                return
            name = f"{metadata['name']}.{time.time_ns():x}"
            involved = {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": namespace,
                "name": metadata["name"],
                "uid": metadata["uid"],
                "resourceVersion": metadata.get("resourceVersion", ""),
            }
            if field_path:
                involved["fieldPath"] = field_path
            body = {
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
                "source": {"component": "kubelet", "host": self.name},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "reportingComponent": "kubelet",
                "reportingInstance": self.name,
            }
            await self._retry(lambda: core.create_namespaced_event(namespace, body), "event")
            self._events[key] = (name, 1)
        except ApiException as error:  # e.g. the namespace is terminating
            log.debug("event %s on %s/%s dropped: %s", reason, namespace, metadata["name"], error)

    def _credentials_for(
        self, pod: Mapping[str, Any], image: str
    ) -> Awaitable[list[tuple[str, str]]]:
        async def collect() -> list[tuple[str, str]]:
            host = image_domain(image)
            found: list[tuple[str, str]] = []
            core = client.CoreV1Api(self.api)
            namespace = pod["metadata"]["namespace"]
            for reference in pod["spec"].get("imagePullSecrets") or []:
                try:
                    response = await core.read_namespaced_secret(
                        reference["name"], namespace, _preload_content=False
                    )
                    found += _docker_config_credentials(json.loads(await response.read()), host)
                except ApiException as error:
                    log.debug("pull secret %s unreadable: %s", reference.get("name"), error)
            if host in self.credentials:
                found.append(self.credentials[host])
            return found

        return collect()

    async def _ensure_image(
        self,
        pod: Mapping[str, Any],
        container: _ContainerState,
        spec: Mapping[str, Any],
        field_path: str,
    ) -> bool:
        """Make the container's image present as the kubelet does; False when it is not (yet)."""
        image = container.image
        pod_key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        policy = spec.get("imagePullPolicy") or default_pull_policy(image)
        present = await self.runtime.status(image)
        if policy == "Never" or (policy == "IfNotPresent" and present is not None):
            if present is not None:
                await self._event(
                    pod,
                    "Pulled",
                    f'Container image "{image}" already present on machine',
                    field_path=field_path,
                )
                container.image_id = (present.repo_digests or (present.id,))[0]
                return True
            message = f'Container image "{image}" is not present with pull policy of Never'
            container.state = {"waiting": {"reason": "ErrImageNeverPull", "message": message}}
            await self._event(
                pod, "ErrImageNeverPull", message, warning=True, field_path=field_path
            )
            return False
        backoff_key = (pod["metadata"]["uid"], image)
        retry_at, _ = self._backoff.get(backoff_key, (0.0, 0.0))
        if time.monotonic() < retry_at:
            message = f'Back-off pulling image "{image}"'
            container.state = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
            await self._event(pod, "BackOff", message, field_path=field_path)
            await self._event(
                pod, "Failed", "Error: ImagePullBackOff", warning=True, field_path=field_path
            )
            return False

        await self._event(pod, "Pulling", f'Pulling image "{image}"', field_path=field_path)
        requested = time.monotonic()
        candidates: list[tuple[str, str] | None] = [*await self._credentials_for(pod, image)]
        if not candidates:
            candidates = [None]
        error_text = ""
        image_ref = ""
        async with self._pull_lock:
            started = time.monotonic()
            for credentials in candidates:
                try:
                    image_ref = await self.runtime.pull(image, credentials)
                    error_text = ""
                    break
                except ImagePullError as error:
                    error_text = str(error)
            finished = time.monotonic()
        if error_text:
            self.pulls.append(
                PullRecord(
                    pod_key, image, False, finished - started, finished - requested, 0, error_text
                )
            )
            _, previous = self._backoff.get(backoff_key, (0.0, 0.0))
            delay = min(
                previous * 2 if previous else self.settings.pull_backoff_seconds,
                self.settings.max_pull_backoff_seconds,
            )
            self._backoff[backoff_key] = (time.monotonic() + delay, delay)
            message = f'Failed to pull image "{image}": {error_text}'
            container.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
            await self._event(pod, "Failed", message, warning=True, field_path=field_path)
            await self._event(
                pod, "Failed", "Error: ErrImagePull", warning=True, field_path=field_path
            )
            return False
        self._backoff.pop(backoff_key, None)
        pulled = await self.runtime.status(image) or await self.runtime.status(image_ref)
        size_bytes = pulled.size_bytes if pulled is not None else 0
        container.image_id = (
            (pulled.repo_digests or (pulled.id,))[0] if pulled is not None else image_ref
        )
        self.pulls.append(
            PullRecord(pod_key, image, True, finished - started, finished - requested, size_bytes)
        )
        await self._event(
            pod,
            "Pulled",
            pulled_message(image, finished - started, finished - requested, size_bytes),
            field_path=field_path,
        )
        await self.sync_images()
        return True

    async def _start_container(
        self, pod: Mapping[str, Any], container: _ContainerState, field_path: str
    ) -> None:
        container.container_id = f"containerd://{secrets.token_hex(32)}"
        await self._event(
            pod, "Created", f"Created container {container.name}", field_path=field_path
        )
        await self._event(
            pod, "Started", f"Started container {container.name}", field_path=field_path
        )
        now = now_rfc3339()
        if container.init:
            container.state = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": now,
                    "finishedAt": now,
                    "containerID": container.container_id,
                }
            }
            container.ready = True
        else:
            container.state = {"running": {"startedAt": now}}
            container.ready = container.started = True

    async def _put_status(
        self,
        pod: Mapping[str, Any],
        phase: str,
        init: list[_ContainerState],
        containers: list[_ContainerState],
        conditions: dict[str, tuple[str, str]],
        pod_ip: str | None,
        start_time: str,
    ) -> None:
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": self.node_ip,
            "startTime": start_time,
            "qosClass": pod.get("status", {}).get("qosClass", "BestEffort"),
            "conditions": [
                {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": since}
                for kind, (value, since) in conditions.items()
            ],
            "containerStatuses": [c.as_status() for c in containers],
        }
        if init:
            status["initContainerStatuses"] = [c.as_status() for c in init]
        if pod_ip:
            status["podIP"] = pod_ip
            status["podIPs"] = [{"ip": pod_ip}]
        core = client.CoreV1Api(self.api)
        metadata = pod["metadata"]
        async with self._status_lock:
            await self._retry(
                lambda: core.patch_namespaced_pod_status(
                    metadata["name"],
                    metadata["namespace"],
                    {"status": status},
                    _content_type=MERGE_PATCH,
                ),
                "patch pod status",
            )

    async def _run_pod(self, pod: dict[str, Any]) -> None:
        try:
            await self._sync_pod(pod)
        except asyncio.CancelledError:
            raise
        except ApiException as error:
            if error.status not in (404, 409, 422):  # pod gone or replaced meanwhile
                log.warning("node %s: pod %s failed: %s", self.name, pod["metadata"]["name"], error)

    async def _sync_pod(self, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        init_specs = spec.get("initContainers") or []
        container_specs = spec.get("containers") or []
        init = [
            _ContainerState(
                c["name"], c["image"], True, state={"waiting": {"reason": "PodInitializing"}}
            )
            for c in init_specs
        ]
        containers = [
            _ContainerState(
                c["name"],
                c["image"],
                False,
                state={"waiting": {"reason": "PodInitializing" if init else "ContainerCreating"}},
            )
            for c in container_specs
        ]
        start_time = pod.get("status", {}).get("startTime") or now_rfc3339()
        scheduled_since = (
            next(
                (
                    c.get("lastTransitionTime")
                    for c in pod.get("status", {}).get("conditions") or []
                    if c.get("type") == "PodScheduled"
                ),
                start_time,
            )
            or start_time
        )
        conditions = {
            "Initialized": ("False" if init else "True", start_time),
            "Ready": ("False", start_time),
            "ContainersReady": ("False", start_time),
            "PodScheduled": ("True", scheduled_since),
        }

        async def put(phase: str = "Pending", pod_ip: str | None = None) -> None:
            await self._put_status(pod, phase, init, containers, conditions, pod_ip, start_time)

        if init:
            init[0].state = {"waiting": {"reason": "PodInitializing"}}
        await put()
        for container, container_spec in zip(init, init_specs, strict=True):
            field_path = f"spec.initContainers{{{container.name}}}"
            while not await self._ensure_image(pod, container, container_spec, field_path):
                await put()
                await self._sleep_backoff(pod, [container])
            await self._start_container(pod, container, field_path)
            await put()
        if init:
            conditions["Initialized"] = ("True", now_rfc3339())
            for container in containers:
                container.state = {"waiting": {"reason": "ContainerCreating"}}

        pending = list(zip(containers, container_specs, strict=True))
        while pending:
            for container, container_spec in list(pending):
                field_path = f"spec.containers{{{container.name}}}"
                if await self._ensure_image(pod, container, container_spec, field_path):
                    await self._start_container(pod, container, field_path)
                    pending.remove((container, container_spec))
            if pending:
                await put()
                await self._sleep_backoff(pod, [container for container, _ in pending])

        pod_ip = f"10.244.{self._index}.{self._pod_ip_counter % 250 + 2}"
        self._pod_ip_counter += 1
        ready_since = now_rfc3339()
        conditions["Ready"] = ("True", ready_since)
        conditions["ContainersReady"] = ("True", ready_since)
        await put("Running", pod_ip)

    async def _sleep_backoff(self, pod: Mapping[str, Any], waiting: list[_ContainerState]) -> None:
        uid = pod["metadata"]["uid"]
        retry_times = [
            self._backoff.get((uid, container.image), (0.0, 0.0))[0] for container in waiting
        ]
        remaining = min(retry_times) - time.monotonic() if retry_times else 0.0
        # Like the kubelet, the pod is synced again before its back-off ends, and that sync
        # reports BackOff / ImagePullBackOff; the pull is retried once the back-off is over.
        await asyncio.sleep(max(0.05, min(remaining, self.settings.pod_resync_seconds)))

    async def _terminate_pod(self, pod: dict[str, Any], worker: asyncio.Task[None] | None) -> None:
        """Stop the pod's containers, then finish graceful deletion as the kubelet does."""
        metadata = pod["metadata"]
        if worker is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        for container in pod["spec"].get("containers") or []:
            await self._event(
                pod,
                "Killing",
                f"Stopping container {container['name']}",
                field_path=f"spec.containers{{{container['name']}}}",
            )
        grace = metadata.get("deletionGracePeriodSeconds") or 0
        await asyncio.sleep(min(float(grace), self.settings.container_stop_seconds))
        core = client.CoreV1Api(self.api)
        try:
            await self._retry(
                lambda: core.delete_namespaced_pod(
                    metadata["name"],
                    metadata["namespace"],
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}},
                    grace_period_seconds=0,
                ),
                "delete pod",
            )
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning(
                    "node %s: deleting pod %s failed: %s", self.name, metadata["name"], error
                )


# --- a set of nodes -------------------------------------------------------------------------


class SimulatedNodes:
    """Simulated kubelets, each with its own containerd, sharing one registry hosts directory."""

    def __init__(
        self, cluster: KubeCluster, base_dir: Path, settings: KubeletSettings | None = None
    ) -> None:
        self.cluster = cluster
        self.base_dir = base_dir
        self.hosts_dir = base_dir / "registry-hosts"
        """containerd ``config_path`` shared by every node's containerd."""
        self.credentials: dict[str, tuple[str, str]] = {}
        """Registry host -> (user, password) every node uses when a pod has no pull secret."""
        self.settings = settings or KubeletSettings()
        self.nodes: dict[str, SimulatedKubelet] = {}
        """Running kubelets by node name."""
        self.engines: dict[str, Containerd] = {}
        """Each node's containerd."""
        self._next_index = 0

    def add_registry(
        self, host: str, endpoint: str | None = None, credentials: tuple[str, str] | None = None
    ) -> None:
        """Route pulls for ``host`` to ``endpoint`` (default ``http://HOST``), with credentials."""
        write_registry_host(self.hosts_dir, host, endpoint or f"http://{host}")
        if credentials is not None:
            self.credentials[host] = credentials

    def __getitem__(self, name: str) -> SimulatedKubelet:
        return self.nodes[name]

    async def add_node(self, spec: NodeSpec) -> SimulatedKubelet:
        """Start containerd and a kubelet for ``spec``; returns when the node is schedulable."""
        if spec.name in self.nodes:
            raise ValueError(f"node {spec.name} already exists")
        index = self._next_index
        self._next_index += 1
        engine = await asyncio.to_thread(
            start_containerd, self.base_dir / f"containerd-{spec.name}", hosts_dir=self.hosts_dir
        )
        self.engines[spec.name] = engine
        try:
            await wait_for_cri(engine)
            runtime: ImageRuntime = (
                CriImageRuntime(engine)
                if spec.architecture == host_architecture()
                else CtrImageRuntime(engine, spec.architecture)
            )
            kubelet = SimulatedKubelet(
                self.cluster.kubeconfig_path,
                spec,
                runtime,
                index=index,
                credentials=self.credentials,
                settings=self.settings,
            )
            await kubelet.start()
            self.nodes[spec.name] = kubelet
            await kubelet.wait_schedulable()
        except BaseException:
            if spec.name in self.nodes:
                await self.nodes.pop(spec.name).stop()
            self.engines.pop(spec.name).stop()
            raise
        return kubelet

    async def add_nodes(self, specs: Sequence[NodeSpec] = DEFAULT_NODES) -> None:
        """Add several nodes concurrently."""
        await asyncio.gather(*(self.add_node(spec) for spec in specs))

    async def remove_node(self, name: str) -> None:
        """Stop the node's kubelet, delete its Node, stop its containerd."""
        kubelet = self.nodes.pop(name)
        try:
            await kubelet.stop(delete_node=True)
        finally:
            self.engines.pop(name).stop()

    async def close(self) -> None:
        """Remove every node (best effort: the API server may already be gone)."""
        for name in list(self.nodes):
            kubelet = self.nodes.pop(name)
            kubelet.settings.api_retry_seconds = 2.0
            with contextlib.suppress(Exception):
                await kubelet.stop(delete_node=self.cluster.processes["kube-apiserver"].running)
        for name in list(self.engines):
            self.engines.pop(name).stop()


async def run_nodes_until_signalled(cluster: KubeCluster, base_dir: Path) -> None:
    """Run :data:`DEFAULT_NODES` until SIGINT/SIGTERM (``python -m tests.support.kube --nodes``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)
    nodes = SimulatedNodes(cluster, base_dir)
    try:
        await nodes.add_nodes()
        print(f"nodes: {', '.join(sorted(nodes.nodes))}; registry hosts dir: {nodes.hosts_dir}")
        print("Ctrl-C stops everything")
        await stop.wait()
        print("stopping")
    finally:
        await nodes.close()
