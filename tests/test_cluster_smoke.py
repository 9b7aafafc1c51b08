"""The Kubernetes test cluster works end to end: control plane, simulated kubelets, real pulls.

Everything here is real except the kubelets' container processes: the API server validates
and authorizes, the controller manager makes DaemonSet pods and ServiceAccount tokens, the
scheduler binds pods, and each simulated node pulls through its own containerd from the
local registries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.images import ImageFactory, OciImage
from tests.support.kube import NODE_LEASE_NAMESPACE, KubeCluster
from tests.support.kubelet import (
    GPU_TAINT_KEY,
    NodeSpec,
    SimulatedKubelet,
    SimulatedNodes,
    go_duration,
)
from tests.support.registry import RunningRegistry

pytestmark = [pytest.mark.cluster, pytest.mark.engine]

T = TypeVar("T")

PULLED_MESSAGE = re.compile(
    r'^Successfully pulled image "(?P<image>[^"]+)" in (?P<pull>\S+) '
    r"\((?P<total>\S+) including waiting\)\. Image size: (?P<size>\d+) bytes\.$"
)
NOOP_COMMAND = ["/imagewarden-noop"]
"""Never run (simulated kubelets start no process); present because real pods need a command."""
WAIT_SECONDS = 60.0


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout_seconds: float = WAIT_SECONDS
) -> T:
    """Poll ``probe`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.Duration`` string (``812ms``, ``1.234s``, ``1m2.5s``)."""
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|h|m|s)", text):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def containerd_size(registry: RunningRegistry, repo: str, image: OciImage, arch: str) -> int:
    """The size containerd reports for ``image`` on ``arch``: index + manifest + config + layers."""
    platform_manifest = image.manifest_for(f"linux/{arch}")
    index_bytes = len(registry.inspect_raw(repo, image.digest)) if image.is_index else 0
    return index_bytes + platform_manifest.manifest_size_bytes + platform_manifest.size_bytes


def daemonset(name: str, init_images: list[str], **pod_spec: Any) -> dict[str, Any]:
    """A pre-pull style DaemonSet: each image in an init container, one long-running container."""
    labels = {"app": name}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "100%"},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [
                        {"name": f"pull-{index}", "image": image, "command": NOOP_COMMAND}
                        for index, image in enumerate(init_images)
                    ],
                    "containers": [
                        {"name": "pause", "image": init_images[-1], "command": NOOP_COMMAND}
                    ],
                    "terminationGracePeriodSeconds": 1,
                    **pod_spec,
                },
            },
        },
    }


async def pods_of(api: ApiClient, namespace: str, app: str) -> list[Any]:
    listing = await client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"app={app}"
    )
    return list(listing.items)


async def ready_daemonset(api: ApiClient, namespace: str, name: str, expected: int) -> Any:
    apps = client.AppsV1Api(api)

    async def probe() -> Any:
        status = (await apps.read_namespaced_daemon_set(name, namespace)).status
        done = status.desired_number_scheduled == expected and status.number_ready == expected
        return status if done else None

    return await wait_for(probe, f"DaemonSet {name} to have {expected} ready pods")


async def pod_events(api: ApiClient, namespace: str, pod_name: str) -> list[Any]:
    events = await client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod_name}"
    )
    # Simulated-kubelet event names end in a nanosecond timestamp: name order is creation order.
    return sorted(
        events.items, key=lambda event: (event.metadata.creation_timestamp, event.metadata.name)
    )


def image_entry(node: Any, name: str) -> Any:
    """The node.status.images entry listing ``name``, or None."""
    return next((entry for entry in node.status.images or [] if name in entry.names), None)


async def test_daemonset_pulls_both_images_on_each_matching_node(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    first = image_factory.multi_platform(salt=f"{namespace}-first", layer_sizes=(300_000, 40_000))
    second = image_factory.multi_platform(salt=f"{namespace}-second", layer_sizes=(150_000,))
    first_digest = await open_registry.push_async(first, "smoke/first", "v1")
    second_digest = await open_registry.push_async(second, "smoke/second", "v1")
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    first_by_tag = open_registry.reference("smoke/first", "v1")
    second_by_digest = open_registry.reference("smoke/second", second_digest)

    await client.AppsV1Api(kube_admin).create_namespaced_daemon_set(
        namespace,
        daemonset(
            "prepull", [first_by_tag, second_by_digest], nodeSelector={"kubernetes.io/os": "linux"}
        ),
    )
    await ready_daemonset(kube_admin, namespace, "prepull", expected=3)

    pods = await pods_of(kube_admin, namespace, "prepull")
    assert sorted(pod.spec.node_name for pod in pods) == ["arm-1", "cpu-1", "cpu-2"], (
        "one pod per untainted node; the GPU node's taint is not tolerated"
    )
    core = client.CoreV1Api(kube_admin)
    for pod in pods:
        assert pod.status.phase == "Running"
        assert pod.status.pod_ip
        assert [s.state.terminated.exit_code for s in pod.status.init_container_statuses] == [0, 0]
        assert pod.status.container_statuses[0].state.running is not None

        node = await core.read_node(pod.spec.node_name)
        arch = node.status.node_info.architecture
        first_entry = image_entry(node, f"{open_registry.host}/smoke/first@{first_digest}")
        second_entry = image_entry(node, second_by_digest)
        assert first_entry is not None, f"{node.metadata.name} does not list {first_by_tag}"
        assert first_by_tag in first_entry.names
        assert second_entry is not None, f"{node.metadata.name} does not list {second_by_digest}"
        assert first_entry.size_bytes == containerd_size(open_registry, "smoke/first", first, arch)
        assert second_entry.size_bytes == containerd_size(
            open_registry, "smoke/second", second, arch
        )

        events = await pod_events(kube_admin, namespace, pod.metadata.name)
        pulled = [
            match
            for event in events
            if event.reason == "Pulled" and (match := PULLED_MESSAGE.match(event.message))
        ]
        assert [match["image"] for match in pulled] == [first_by_tag, second_by_digest]
        records = [
            record
            for record in kube_nodes[pod.spec.node_name].pulls
            if record.pod == f"{namespace}/{pod.metadata.name}"
        ]
        for match, record, entry in zip(pulled, records, (first_entry, second_entry), strict=True):
            assert int(match["size"]) == entry.size_bytes
            assert match["pull"] == go_duration(record.duration_seconds)
            assert 0 < parse_go_duration(match["pull"]) <= parse_go_duration(match["total"])
        reasons = [event.reason for event in events if event.source.component == "kubelet"]
        assert reasons.count("Pulling") == 2
        assert reasons.count("Started") == 3
        already = [
            e.message for e in events if e.involved_object.field_path == "spec.containers{pause}"
        ]
        assert f'Container image "{second_by_digest}" already present on machine' in already

    gpu = await core.read_node("gpu-1")
    assert image_entry(gpu, first_by_tag) is None, "the GPU node pulled nothing"


async def test_tolerating_daemonset_lands_on_the_gpu_node_only(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    digest = await open_registry.push_async(
        image_factory.single(salt=namespace), "smoke/gpu-only", "v1"
    )
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    image = open_registry.reference("smoke/gpu-only", digest)
    await client.AppsV1Api(kube_admin).create_namespaced_daemon_set(
        namespace,
        daemonset(
            "gpu-prepull",
            [image],
            nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
            tolerations=[{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        ),
    )
    await ready_daemonset(kube_admin, namespace, "gpu-prepull", expected=1)
    pods = await pods_of(kube_admin, namespace, "gpu-prepull")
    assert [pod.spec.node_name for pod in pods] == ["gpu-1"]
    gpu = await client.CoreV1Api(kube_admin).read_node("gpu-1")
    assert image_entry(gpu, image) is not None


async def test_rbac_limits_a_minted_service_account_and_user(
    kube_cluster: KubeCluster, kube_admin: ApiClient, namespace: str
) -> None:
    reader = await kube_cluster.service_account_identity(
        kube_admin,
        namespace,
        "pod-reader",
        rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    )
    assert reader.username == f"system:serviceaccount:{namespace}:pod-reader"
    async with reader.client() as api:
        core = client.CoreV1Api(api)
        assert (await core.list_namespaced_pod(namespace)).items == []
        for forbidden in (
            core.list_namespaced_secret(namespace),
            core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}}),
            core.list_node(),
            core.list_namespaced_pod("default"),
        ):
            with pytest.raises(ApiException) as refused:
                await forbidden
            assert refused.value.status == 403

    node_viewer = await kube_cluster.user_identity(
        kube_admin,
        namespace=namespace,
        cluster_rules=[{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}],
    )
    async with node_viewer.client() as api:
        core = client.CoreV1Api(api)
        await core.list_node()
        with pytest.raises(ApiException) as refused:
            await core.delete_node("cpu-1")
        assert refused.value.status == 403
        with pytest.raises(ApiException) as refused:
            await core.list_namespaced_pod(namespace)
        assert refused.value.status == 403


def bare_pod(name: str, image: str, node: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "main", "image": image, "command": NOOP_COMMAND}],
            "terminationGracePeriodSeconds": 30,
            **spec,
        },
    }


async def running_pod(api: ApiClient, namespace: str, name: str) -> Any:
    core = client.CoreV1Api(api)

    async def probe() -> Any:
        pod = await core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" else None

    return await wait_for(probe, f"pod {name} to run")


async def test_graceful_deletion_completes(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    digest = await open_registry.push_async(image_factory.single(salt=namespace), "smoke/gone", "1")
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    core = client.CoreV1Api(kube_admin)
    await core.create_namespaced_pod(
        namespace, bare_pod("doomed", open_registry.reference("smoke/gone", digest), "cpu-2")
    )
    await running_pod(kube_admin, namespace, "doomed")
    started = time.monotonic()
    await core.delete_namespaced_pod("doomed", namespace)  # default grace period: 30 s

    async def gone() -> bool:
        try:
            await core.read_namespaced_pod("doomed", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    await wait_for(gone, "the kubelet to finish graceful deletion", timeout_seconds=15)
    assert time.monotonic() - started < 15, "deletion did not wait out the 30 s grace period"


async def test_failed_pull_reports_errimagepull_then_backoff(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
) -> None:
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    missing = open_registry.reference("smoke/does-not-exist", "v1")
    core = client.CoreV1Api(kube_admin)
    await core.create_namespaced_pod(namespace, bare_pod("broken", missing, "cpu-1"))

    async def backed_off() -> list[Any] | None:
        events = await pod_events(kube_admin, namespace, "broken")
        return events if any(event.reason == "BackOff" for event in events) else None

    events = await wait_for(backed_off, "a BackOff event")
    failed = [event.message for event in events if event.reason == "Failed"]
    assert any(
        message.startswith(f'Failed to pull image "{missing}": rpc error: code = NotFound')
        for message in failed
    ), failed
    assert "Error: ErrImagePull" in failed
    assert all(event.type == "Warning" for event in events if event.reason == "Failed")
    pod = await core.read_namespaced_pod("broken", namespace)
    assert pod.status.phase == "Pending"
    waiting = pod.status.container_statuses[0].state.waiting
    assert waiting.reason in ("ErrImagePull", "ImagePullBackOff")


async def test_pull_secret_credentials_reach_a_private_registry(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    htpasswd_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    assert htpasswd_registry.credentials is not None
    digest = await htpasswd_registry.push_async(
        image_factory.single(salt=namespace), "private/app", "1"
    )
    kube_nodes.add_registry(htpasswd_registry.host, htpasswd_registry.url)
    image = htpasswd_registry.reference("private/app", digest)
    user, password = htpasswd_registry.credentials
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    docker_config = {"auths": {htpasswd_registry.host: {"auth": auth}}}
    core = client.CoreV1Api(kube_admin)
    await core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {
                ".dockerconfigjson": base64.b64encode(json.dumps(docker_config).encode()).decode()
            },
        },
    )
    await core.create_namespaced_pod(namespace, bare_pod("anonymous", image, "cpu-1"))
    await core.create_namespaced_pod(
        namespace, bare_pod("with-secret", image, "cpu-2", imagePullSecrets=[{"name": "pull"}])
    )
    await running_pod(kube_admin, namespace, "with-secret")

    async def refused() -> list[str] | None:
        events = await pod_events(kube_admin, namespace, "anonymous")
        failed = [event.message for event in events if event.reason == "Failed"]
        return failed or None

    failed = await wait_for(refused, "the anonymous pull to fail")
    assert any("401 Unauthorized" in message for message in failed), failed


async def test_nodes_and_pods_survive_an_api_server_restart(
    kube_cluster: KubeCluster,
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    digest = await open_registry.push_async(
        image_factory.single(salt=namespace), "smoke/after", "1"
    )
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    coordination = client.CoordinationV1Api(kube_admin)
    before = (await coordination.read_namespaced_lease("cpu-1", NODE_LEASE_NAMESPACE)).spec

    await asyncio.to_thread(kube_cluster.restart_apiserver, 1.0)

    core = client.CoreV1Api(kube_admin)
    await core.create_namespaced_pod(
        namespace,
        bare_pod("after-restart", open_registry.reference("smoke/after", digest), "cpu-1"),
    )
    await running_pod(kube_admin, namespace, "after-restart")

    async def renewed() -> bool:
        lease = await coordination.read_namespaced_lease("cpu-1", NODE_LEASE_NAMESPACE)
        return bool(lease.spec.renew_time > before.renew_time)

    await wait_for(renewed, "the node lease to be renewed after the restart", timeout_seconds=20)


async def test_a_node_that_joins_later_pulls_cold_and_removal_deletes_it(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    extra_node: Callable[[NodeSpec], Awaitable[SimulatedKubelet]],
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    repo = f"smoke/{namespace}"
    digest = await open_registry.push_async(
        image_factory.single(salt=namespace, layer_sizes=(80_000,)), repo, "v1"
    )
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    image = open_registry.reference(repo, digest)
    cpu_pool = {"imagewarden.test/pool": "cpu"}
    await client.AppsV1Api(kube_admin).create_namespaced_daemon_set(
        namespace, daemonset("cpu-prepull", [image], nodeSelector=cpu_pool)
    )
    await ready_daemonset(kube_admin, namespace, "cpu-prepull", expected=2)

    def blob_fetches() -> int:
        return sum(
            1
            for request in open_registry.request_log()
            if request.method == "GET" and request.path.startswith(f"/v2/{repo}/blobs/")
        )

    fetched_by_two_nodes = blob_fetches()
    await extra_node(NodeSpec("late-cpu", labels=cpu_pool))
    await ready_daemonset(kube_admin, namespace, "cpu-prepull", expected=3)
    core = client.CoreV1Api(kube_admin)
    assert image_entry(await core.read_node("late-cpu"), image) is not None
    assert blob_fetches() == fetched_by_two_nodes * 3 // 2, "the new node pulled every blob itself"

    await kube_nodes.remove_node("late-cpu")
    with pytest.raises(ApiException) as gone:
        await core.read_node("late-cpu")
    assert gone.value.status == 404
    # Its pod stays until the pod garbage collector's orphan sweep (40 s quarantine in 1.20),
    # as on a real cluster; the Lease goes with its owner at once.
    coordination = client.CoordinationV1Api(kube_admin)

    async def lease_collected() -> bool:
        try:
            await coordination.read_namespaced_lease("late-cpu", NODE_LEASE_NAMESPACE)
        except ApiException as error:
            return error.status == 404
        return False

    await wait_for(lease_collected, "the garbage collector to delete the node's Lease")


@pytest.mark.parametrize(
    "node_name",
    [pytest.param("cpu-1", id="cri-amd64"), pytest.param("arm-1", id="ctr-arm64")],
)
async def test_node_images_follow_the_runtime_when_an_image_is_removed(
    node_name: str,
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
) -> None:
    repo = f"smoke/{namespace}"
    digest = await open_registry.push_async(
        image_factory.multi_platform(salt=namespace), repo, "v2"
    )
    kube_nodes.add_registry(open_registry.host, open_registry.url)
    by_tag = open_registry.reference(repo, "v2")
    core = client.CoreV1Api(kube_admin)
    await core.create_namespaced_pod(namespace, bare_pod("puller", by_tag, node_name))
    await running_pod(kube_admin, namespace, "puller")
    entry = image_entry(await core.read_node(node_name), by_tag)
    assert entry is not None
    assert entry.names == [open_registry.reference(repo, digest), by_tag]

    await kube_nodes[node_name].remove_image(by_tag)

    assert image_entry(await core.read_node(node_name), by_tag) is None
    assert await kube_nodes[node_name].runtime.status(by_tag) is None
