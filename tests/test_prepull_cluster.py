"""The pre-pull controller against the real test cluster.

Real parts throughout: kube-apiserver validates, authorizes (RBAC) and watches; the controller
manager turns our DaemonSets into pods, the scheduler binds them, and the simulated kubelets
pull every init container's image through their own containerd from a local registry and
report Events and ``node.status.images``.  The one thing not real is that no container
process runs, so "an image without a shell pre-pulls" is shown by the pull and the pod's
command (``/imagewarden-bin/noop``), and the no-op binary itself is tested in
tests/test_prepull_noop.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from imagewarden.config import load_config
from imagewarden.metrics import Metrics
from imagewarden.prepull.controller import (
    OUR_SELECTOR,
    RBAC_RULES,
    Controller,
    ControllerSettings,
    WatchCursor,
    infinite_watch,
    make_status_app,
    placement_and_images,
)
from imagewarden.prepull.pools import PrepullConfig, parse_prepull
from imagewarden.prepull.render import (
    NOOP_MOUNT_PATH,
    POOL_LABEL,
    SPEC_HASH_ANNOTATION,
    container_name,
    daemonset_name,
    render_all,
)
from imagewarden.registry import RegistryClient
from tests.support.images import ImageFactory
from tests.support.kube import KubeCluster
from tests.support.kubelet import GPU_TAINT_KEY, NodeSpec, SimulatedKubelet, SimulatedNodes
from tests.support.registry import RunningRegistry

pytestmark = [pytest.mark.cluster, pytest.mark.engine]

T = TypeVar("T")
WAIT_SECONDS = 90.0
CPU_SELECTOR = {"imagewarden.test/pool": "cpu"}
GPU_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


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
        await asyncio.sleep(0.25)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Images:
    """Images pushed for one test: name -> reference by tag, and their digests."""

    noop: str
    refs: dict[str, str]
    digests: dict[str, str]


async def push_images(
    registry: RunningRegistry,
    factory: ImageFactory,
    nodes: SimulatedNodes,
    namespace: str,
    names: list[str],
) -> Images:
    """Push a busybox 'imagewarden' image and one shell-free image per name (unique per test)."""
    nodes.add_registry(registry.host, registry.url)
    noop_digest = await registry.push_async(
        factory.with_busybox(salt=f"{namespace}-noop"), f"{namespace}/imagewarden", "dev"
    )
    assert noop_digest
    refs, digests = {}, {}
    for name in names:
        image = factory.no_shell(salt=f"{namespace}-{name}")
        digests[name] = await registry.push_async(image, f"{namespace}/{name}", "v1")
        refs[name] = registry.reference(f"{namespace}/{name}", "v1")
    return Images(registry.reference(f"{namespace}/imagewarden", "dev"), refs, digests)


def write_config(path: Path, registry: RunningRegistry, prepull: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "registries": {registry.host: {"endpoint": registry.url}},
                "policy": {"allow": [f"{registry.host}/**"]},
                "prepull": prepull,
            }
        )
    )
    return path


def cpu_pool(namespace: str, images: Images, **extra: Any) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "noop_image": images.noop,
        "pools": {"cpu": {"nodeSelector": CPU_SELECTOR, "images": [images.refs["cpu"]]}},
        **extra,
    }


def two_pools(namespace: str, images: Images, **extra: Any) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "noop_image": images.noop,
        "pools": {
            "cpu": {"nodeSelector": CPU_SELECTOR, "images": [images.refs["cpu"]]},
            "gpu": {
                "nodeSelector": GPU_SELECTOR,
                "tolerations": [GPU_TOLERATION],
                "images": [images.refs["gpu"]],
            },
        },
        **extra,
    }


@dataclass
class Running:
    controller: Controller
    url: str
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_controller(
    api: ApiClient,
    config: PrepullConfig,
    namespace: str,
    *,
    resolver: RegistryClient | None = None,
    identity: str = "test-controller",
) -> AsyncIterator[Running]:
    """The controller and its HTTP app, in this event loop; both stopped on exit."""
    controller = Controller(
        config,
        api,
        ControllerSettings(
            namespace=namespace,
            identity=identity,
            reconcile_interval_seconds=5,
            retry_interval_seconds=0.5,
            max_backoff_seconds=2,
        ),
        resolver=resolver,
        metrics=Metrics(CollectorRegistry()),
    )
    runner = web.AppRunner(make_status_app(controller))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    task = asyncio.create_task(controller.run())
    try:
        yield Running(controller, f"http://127.0.0.1:{port}", task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def get_metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def daemonset(api: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The DaemonSet as plain JSON, or None when it does not exist."""
    response = await client.AppsV1Api(api).read_namespaced_daemon_set(
        name, namespace, _preload_content=False
    )
    body = json.loads(await response.read())
    if response.status == 404:
        return None
    assert response.status == 200, body
    loaded: dict[str, Any] = body
    return loaded


async def daemonset_changed(
    api: ApiClient, namespace: str, pool: str, before: dict[str, Any]
) -> dict[str, Any]:
    """Wait until the pool's DaemonSet spec differs from ``before`` (the controller patched it)."""

    async def probe() -> dict[str, Any] | None:
        current = await daemonset(api, namespace, daemonset_name(pool))
        if current is None or current["spec"]["template"] == before["spec"]["template"]:
            return None
        return current

    return await wait_for(probe, f"the {pool} DaemonSet to be patched")


async def ready_pods(api: ApiClient, namespace: str, pool: str, expected: int) -> list[Any]:
    """Wait until the pool's DaemonSet has ``expected`` pods, all Running on the current spec."""
    core = client.CoreV1Api(api)

    async def probe() -> list[Any] | None:
        current = await daemonset(api, namespace, daemonset_name(pool))
        if current is None:
            return None
        wanted = [c["image"] for c in current["spec"]["template"]["spec"]["initContainers"]]
        pods = (
            await core.list_namespaced_pod(namespace, label_selector=f"{POOL_LABEL}={pool}")
        ).items
        done = len(pods) == expected and all(
            pod.status.phase == "Running"
            and pod.metadata.deletion_timestamp is None
            and [c.image for c in pod.spec.init_containers] == wanted
            for pod in pods
        )
        return pods if done else None

    return await wait_for(probe, f"{expected} running pods of pool {pool}")


async def warm(url: str, pool: str, nodes: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = await get_json(f"{url}/status")
        entry = status["pools"][pool]
        ready = entry["nodes_total"] == nodes and entry["nodes_warm"] == nodes
        return status if ready else None

    return await wait_for(probe, f"/status to show pool {pool} warm on {nodes} nodes")


def node_image_names(kubelet: SimulatedKubelet) -> set[str]:
    return {record.image for record in kubelet.pulls}


def pulls_of(nodes: SimulatedNodes, namespace: str, pool: str, image_prefix: str) -> list[Any]:
    """The simulated kubelets' successful pull records of pool ``pool`` in ``namespace``."""
    prefix = f"{namespace}/{daemonset_name(pool)}-"
    return [
        record
        for kubelet in nodes.nodes.values()
        for record in kubelet.pulls
        if record.pod.startswith(prefix) and record.image.startswith(image_prefix)
    ]


# ---------------------------------------------------------------------------------------------


async def test_rendered_daemonsets_pass_api_server_validation(
    kube_admin: ApiClient, namespace: str
) -> None:
    """Server-side dry-run create of every shape the renderer makes; nothing dropped."""
    scheduling = client.SchedulingV1Api(kube_admin)
    priority_class = f"{namespace}-low"
    await scheduling.create_priority_class(
        {"metadata": {"name": priority_class}, "value": -10, "preemptionPolicy": "Never"}
    )
    try:
        config = parse_prepull(
            {
                "namespace": namespace,
                "priority_class_name": priority_class,
                "image_pull_secrets": ["regcred"],
                "pools": {
                    "cpu": {
                        "nodeSelector": CPU_SELECTOR,
                        "images": ["quay.io/pangeo/pangeo-notebook:2023.09.11", "ubuntu"],
                    },
                    "gpu": {
                        "nodeSelector": GPU_SELECTOR,
                        "tolerations": [
                            GPU_TOLERATION,
                            {
                                "key": "k",
                                "value": "v",
                                "effect": "NoExecute",
                                "tolerationSeconds": 5,
                            },
                        ],
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {"key": "gpu", "operator": "In", "values": ["t4"]}
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                        "images": ["quay.io/pangeo/ml-notebook:2024.01.18"],
                    },
                    "p" * 40: {"images": ["quay.io/x/" + "y" * 200 + ":1"]},
                },
            }
        )
        apps = client.AppsV1Api(kube_admin)
        for document in render_all(config):
            response = await apps.create_namespaced_daemon_set(
                namespace, document, dry_run="All", _preload_content=False
            )
            stored = json.loads(await response.read())
            assert _missing_fields(document, stored) == [], document["metadata"]["name"]
            # What drift detection compares must come back exactly as sent (no patch loop).
            assert placement_and_images(stored) == placement_and_images(document)
        listing = await apps.list_namespaced_daemon_set(namespace)
        assert listing.items == [], "a dry run must not store anything"
    finally:
        await scheduling.delete_priority_class(priority_class)


def _missing_fields(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Paths of values we sent that the API server dropped or changed (1.20 prunes silently)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path]
        return [
            missing
            for key, value in sent.items()
            for missing in _missing_fields(value, stored.get(key), f"{path}.{key}")
        ]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [path]
        return [
            missing
            for index, (a, b) in enumerate(zip(sent, stored, strict=True))
            for missing in _missing_fields(a, b, f"{path}[{index}]")
        ]
    return [] if sent == stored else [f"{path}: {sent!r} != {stored!r}"]


async def test_cpu_and_gpu_pools_land_only_on_matching_nodes(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    images = await push_images(open_registry, image_factory, kube_nodes, namespace, ["cpu", "gpu"])
    config_path = write_config(
        tmp_path / "config.yaml", open_registry, two_pools(namespace, images)
    )
    settings = load_config(config_path)
    async with (
        RegistryClient(settings) as registry,
        running_controller(kube_admin, settings.prepull, namespace, resolver=registry) as running,
    ):
        cpu_pods = await ready_pods(kube_admin, namespace, "cpu", expected=2)
        gpu_pods = await ready_pods(kube_admin, namespace, "gpu", expected=1)
        assert sorted(p.spec.node_name for p in cpu_pods) == ["cpu-1", "cpu-2"]
        assert [p.spec.node_name for p in gpu_pods] == ["gpu-1"]

        # Pinned to the digest the registry reported at push time, and shell-free.
        for pool, pods in (("cpu", cpu_pods), ("gpu", gpu_pods)):
            pinned = f"{open_registry.host}/{namespace}/{pool}@{images.digests[pool]}"
            installer, puller = pods[0].spec.init_containers
            assert puller.image == pinned
            assert puller.command == [f"{NOOP_MOUNT_PATH}/noop"]
            assert installer.image == images.noop
            for pod in pods:
                statuses = pod.status.init_container_statuses
                assert [s.state.terminated.exit_code for s in statuses] == [0, 0]

        # GPU images never reach CPU nodes (nor the arm64 node), CPU images never the GPU node.
        gpu_repo = f"{open_registry.host}/{namespace}/gpu"
        cpu_repo = f"{open_registry.host}/{namespace}/cpu"
        core = client.CoreV1Api(kube_admin)
        for node_name in ("cpu-1", "cpu-2", "arm-1", "gpu-1"):
            node = await core.read_node(node_name)
            names = {n for entry in node.status.images or [] for n in entry.names}
            pulled = node_image_names(kube_nodes[node_name])
            has_gpu = any(n.startswith(gpu_repo) for n in names | pulled)
            has_cpu = any(n.startswith(cpu_repo) for n in names | pulled)
            assert has_gpu == (node_name == "gpu-1"), node_name
            assert has_cpu == (node_name in ("cpu-1", "cpu-2")), node_name

        # /status, /metrics and `prepull status` agree with what the nodes reported.
        status = await warm(running.url, "cpu", 2)
        status = await warm(running.url, "gpu", 1)
        metrics = await get_metrics(running.url)
        for pool, node_count in (("cpu", 2), ("gpu", 1)):
            records = pulls_of(
                kube_nodes, namespace, pool, f"{open_registry.host}/{namespace}/{pool}@"
            )
            assert len(records) == node_count
            assert all(r.succeeded for r in records)
            entry = status["pools"][pool]
            (image,) = entry["images"]
            assert (
                image["pull"] == f"{open_registry.host}/{namespace}/{pool}@{images.digests[pool]}"
            )
            assert image["nodes"] == dict.fromkeys(entry["nodes"], "present")

            async def counted(pool: str = pool, count: int = node_count) -> dict[str, Any] | None:
                document = await get_json(f"{running.url}/status")
                image = document["pools"][pool]["images"][0]
                return image if image["pulls"]["success"] == count else None

            image = await wait_for(counted, f"{pool} pull events counted")
            millis = [int(r.duration_seconds * 1000) / 1000 for r in records]
            last = image["last_pull_duration_seconds"]
            assert any(abs(last - reported) < 1e-6 for reported in millis), (last, millis)
            assert image["size_bytes"] == records[0].size_bytes
            metrics = await get_metrics(running.url)
            labels = (("pool", pool),)
            assert metrics[("imagewarden_prepull_pool_nodes", labels)] == node_count
            assert metrics[("imagewarden_prepull_pool_nodes_warm", labels)] == node_count
            assert metrics[("imagewarden_image_pull_duration_seconds_count", labels)] == node_count
            assert metrics[
                ("imagewarden_image_pull_duration_seconds_sum", labels)
            ] == pytest.approx(sum(millis), abs=1e-6)
            assert (
                metrics[("imagewarden_image_pulls_total", (("pool", pool), ("result", "success")))]
                == node_count
            )

        completed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "imagewarden.cli", "prepull", "status", "--url", running.url],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        text = completed.stdout
        assert "pool cpu: 2/2 nodes warm" in text
        assert "pool gpu: 1/1 nodes warm" in text
        assert "[####################]" in text


async def test_config_change_patches_and_removed_pool_is_deleted(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    images = await push_images(
        open_registry, image_factory, kube_nodes, namespace, ["cpu", "gpu", "extra"]
    )
    apps = client.AppsV1Api(kube_admin)
    # Not ours, but named as our pool "taken" would be: it must be left alone.
    taken_pool = {
        "nodeSelector": {"imagewarden.test/pool": "none"},
        "images": [images.refs["extra"]],
    }
    squatter_labels = {"app": "someone-else"}
    await apps.create_namespaced_daemon_set(
        namespace,
        {
            "metadata": {"name": daemonset_name("taken"), "labels": squatter_labels},
            "spec": {
                "selector": {"matchLabels": squatter_labels},
                "template": {
                    "metadata": {"labels": squatter_labels},
                    "spec": {
                        "nodeSelector": {"nowhere": "true"},
                        "containers": [{"name": "c", "image": images.noop}],
                    },
                },
            },
        },
    )

    first = load_config(
        write_config(
            tmp_path / "1.yaml",
            open_registry,
            cpu_pool(namespace, images),
        )
    )
    async with (
        RegistryClient(first) as registry,
        running_controller(kube_admin, first.prepull, namespace, resolver=registry) as running,
    ):
        await ready_pods(kube_admin, namespace, "cpu", expected=2)
        before = await daemonset(kube_admin, namespace, daemonset_name("cpu"))
        assert before is not None
        settled = await running.controller.reconcile_once()
        assert settled.unchanged == (daemonset_name("cpu"),), "nothing to patch once applied"
        assert settled.patched == settled.created == settled.deleted == ()

        # Someone edits where the pool runs without touching our hash: it is put back.
        await apps.patch_namespaced_daemon_set(
            daemonset_name("cpu"),
            namespace,
            {"spec": {"template": {"spec": {"nodeSelector": {"imagewarden.test/pool": "gpu"}}}}},
            _content_type="application/merge-patch+json",
        )

        async def restored() -> bool:
            current = await daemonset(kube_admin, namespace, daemonset_name("cpu"))
            return current is not None and (
                current["spec"]["template"]["spec"]["nodeSelector"] == CPU_SELECTOR
            )

        await wait_for(restored, "the edited nodeSelector to be restored")
        await ready_pods(kube_admin, namespace, "cpu", expected=2)
        before = await daemonset(kube_admin, namespace, daemonset_name("cpu"))
        assert before is not None

        # Add an image to the pool: the same DaemonSet is patched and rolls.
        second = load_config(
            write_config(
                tmp_path / "2.yaml",
                open_registry,
                {
                    "namespace": namespace,
                    "noop_image": images.noop,
                    "pools": {
                        "cpu": {
                            "nodeSelector": CPU_SELECTOR,
                            "images": [images.refs["cpu"], images.refs["extra"]],
                        }
                    },
                },
            )
        )
        running.controller.set_config(second.prepull)
        after = await daemonset_changed(kube_admin, namespace, "cpu", before)
        pods = await ready_pods(kube_admin, namespace, "cpu", expected=2)
        assert after["metadata"]["uid"] == before["metadata"]["uid"], "patched, not re-created"
        assert (
            after["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
            != (before["metadata"]["annotations"][SPEC_HASH_ANNOTATION])
        )
        assert [c.name for c in pods[0].spec.init_containers][1:] == [
            container_name(f"{open_registry.host}/{namespace}/{name}:v1")
            for name in ("cpu", "extra")
        ]

        # Replace the pool by another: the old DaemonSet goes, a new one comes.
        third = load_config(
            write_config(tmp_path / "3.yaml", open_registry, two_pools(namespace, images))
        )
        running.controller.set_config(
            PrepullConfig(
                namespace=namespace,
                noop_image=images.noop,
                pools={"gpu": third.prepull.pools["gpu"]},
            )
        )

        async def cpu_gone() -> bool:
            return await daemonset(kube_admin, namespace, daemonset_name("cpu")) is None

        await wait_for(cpu_gone, "the cpu pool's DaemonSet to be deleted")
        await ready_pods(kube_admin, namespace, "gpu", expected=1)

        # A pool whose DaemonSet name is taken by an object that is not ours: refused.
        running.controller.set_config(
            PrepullConfig(
                namespace=namespace,
                noop_image=images.noop,
                pools={
                    "gpu": third.prepull.pools["gpu"],
                    "taken": parse_prepull({"pools": {"taken": taken_pool}}).pools["taken"],
                },
            )
        )

        async def refused() -> list[str] | None:
            status = await get_json(f"{running.url}/status")
            errors: list[str] = status["last_reconcile_errors"]
            return errors or None

        errors = await wait_for(refused, "the reconcile error about the unlabelled DaemonSet")
        assert any("not labelled" in e and daemonset_name("taken") in e for e in errors)
        kept = await daemonset(kube_admin, namespace, daemonset_name("taken"))
        assert kept is not None
        assert kept["metadata"]["labels"] == squatter_labels
        assert kept["spec"]["template"]["spec"]["nodeSelector"] == {"nowhere": "true"}

    # Our labels select exactly our objects; the squatter never matched.
    ours = await apps.list_namespaced_daemon_set(namespace, label_selector=OUR_SELECTOR)
    assert [d.metadata.name for d in ours.items] == [daemonset_name("gpu")]


async def test_moved_tag_rolls_the_pool_to_the_new_digest(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    images = await push_images(open_registry, image_factory, kube_nodes, namespace, ["cpu"])
    prepull = cpu_pool(namespace, images, resolve_interval_seconds=5)
    settings = load_config(write_config(tmp_path / "c.yaml", open_registry, prepull))
    repo = f"{namespace}/cpu"
    async with (
        RegistryClient(settings) as registry,
        running_controller(kube_admin, settings.prepull, namespace, resolver=registry) as running,
    ):
        await ready_pods(kube_admin, namespace, "cpu", expected=2)
        await warm(running.url, "cpu", 2)
        new_digest = await open_registry.push_async(
            image_factory.no_shell(salt=f"{namespace}-moved"), repo, "v1"
        )
        assert new_digest != images.digests["cpu"]
        before = await daemonset(kube_admin, namespace, daemonset_name("cpu"))
        assert before is not None
        changed = await daemonset_changed(kube_admin, namespace, "cpu", before)
        pinned = f"{open_registry.host}/{repo}@{new_digest}"
        assert changed["spec"]["template"]["spec"]["initContainers"][1]["image"] == pinned
        pods = await ready_pods(kube_admin, namespace, "cpu", expected=2)
        assert all(p.spec.init_containers[1].image == pinned for p in pods)

        status = await warm(running.url, "cpu", 2)
        assert status["pools"]["cpu"]["images"][0]["pull"] == pinned
        core = client.CoreV1Api(kube_admin)
        for node_name in ("cpu-1", "cpu-2"):
            node = await core.read_node(node_name)
            assert any(pinned in entry.names for entry in node.status.images or [])


async def test_api_server_restart_mid_watch_keeps_state(
    kube_cluster: KubeCluster,
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    extra_node: Callable[[NodeSpec], Awaitable[SimulatedKubelet]],
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    images = await push_images(open_registry, image_factory, kube_nodes, namespace, ["cpu"])
    settings = load_config(
        write_config(
            tmp_path / "c.yaml",
            open_registry,
            cpu_pool(namespace, images),
        )
    )
    async with (
        RegistryClient(settings) as registry,
        running_controller(kube_admin, settings.prepull, namespace, resolver=registry) as running,
    ):
        await ready_pods(kube_admin, namespace, "cpu", expected=2)
        before = await warm(running.url, "cpu", 2)
        pulls_before = before["pools"]["cpu"]["images"][0]["pulls"]["success"]
        assert pulls_before == 2

        await asyncio.to_thread(kube_cluster.restart_apiserver, 2.0)

        # A node joins after the restart: the controller must see it through resumed watches.
        late = f"late-{namespace[-6:]}"
        await extra_node(NodeSpec(late, labels=CPU_SELECTOR))
        after = await warm(running.url, "cpu", 3)
        entry = after["pools"]["cpu"]
        assert entry["nodes"] == sorted(["cpu-1", "cpu-2", late])

        async def three_pulls() -> int | None:
            status = await get_json(f"{running.url}/status")
            count: int = status["pools"]["cpu"]["images"][0]["pulls"]["success"]
            return count if count == 3 else None

        await wait_for(three_pulls, "the late node's pull to be counted exactly once more")
        metrics = await get_metrics(running.url)
        assert metrics[("imagewarden_image_pull_duration_seconds_count", (("pool", "cpu"),))] == 3
        assert running.controller.coverage.leader
        assert all(cursor.synced for cursor in running.controller.cursors.values())


async def test_watch_relists_after_410_gone(
    kube_cluster: KubeCluster, kube_admin: ApiClient, kube_nodes: SimulatedNodes
) -> None:
    # A restarted API server's watch cache starts at the current revision: older versions are
    # "too old" (410 Gone, reason Expired), as after etcd compaction on a long-running cluster.
    await asyncio.to_thread(kube_cluster.restart_apiserver)
    core = client.CoreV1Api(kube_admin)
    cursor = WatchCursor(resource_version="1")
    seen: dict[str, Any] = {}

    def on_sync(items: list[dict[str, Any]]) -> None:
        seen.clear()
        seen.update({item["metadata"]["name"]: item for item in items})

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        seen[obj["metadata"]["name"]] = obj

    task = asyncio.create_task(
        infinite_watch(
            core.list_node, name="nodes", on_sync=on_sync, on_event=on_event, cursor=cursor
        )
    )
    try:

        async def listed() -> bool:
            return cursor.lists == 1 and {"cpu-1", "cpu-2", "gpu-1", "arm-1"} <= set(seen)

        await wait_for(listed, "a re-list after 410 Gone", timeout_seconds=30)
        assert cursor.resource_version not in (None, "1")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled(), "CancelledError must propagate out of the watch"


async def test_only_the_lease_holder_acts(
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    images = await push_images(open_registry, image_factory, kube_nodes, namespace, ["cpu"])
    settings = load_config(
        write_config(
            tmp_path / "c.yaml",
            open_registry,
            cpu_pool(namespace, images),
        )
    )
    coordination = client.CoordinationV1Api(kube_admin)
    async with running_controller(
        kube_admin, settings.prepull, namespace, identity="first"
    ) as first:
        await ready_pods(kube_admin, namespace, "cpu", expected=2)
        async with running_controller(
            kube_admin, settings.prepull, namespace, identity="second"
        ) as second:
            await warm(second.url, "cpu", 2)  # followers watch and report too
            assert first.controller.coverage.leader
            assert not second.controller.coverage.leader
            lease = await coordination.read_namespaced_lease("imagewarden-prepull", namespace)
            assert lease.spec.holder_identity == "first"
            assert second.controller.last_reconcile is None, "a follower never writes"

            first.task.cancel()  # the leader stops and hands the Lease back
            with contextlib.suppress(asyncio.CancelledError):
                await first.task

            async def second_leads() -> bool:
                return second.controller.coverage.leader

            await wait_for(second_leads, "the second replica to take over", timeout_seconds=30)
            lease = await coordination.read_namespaced_lease("imagewarden-prepull", namespace)
            assert lease.spec.holder_identity == "second"
            assert lease.spec.lease_transitions == 1
            await wait_for(lambda: _reconciled(second.controller), "the new leader to reconcile")


async def _reconciled(controller: Controller) -> bool:
    return controller.last_reconcile is not None and not controller.last_reconcile.errors


async def test_controller_under_exact_rbac_via_cli(
    kube_cluster: KubeCluster,
    kube_admin: ApiClient,
    kube_nodes: SimulatedNodes,
    namespace: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    """`imagewarden prepull run` as a ServiceAccount granted exactly RBAC_RULES: every rule is
    used (list/watch, create, patch, delete, Lease create/get/update) and none is missing."""
    images = await push_images(open_registry, image_factory, kube_nodes, namespace, ["cpu", "gpu"])
    identity = await kube_cluster.service_account_identity(
        kube_admin,
        namespace,
        "imagewarden-prepull",
        rules=RBAC_RULES["Role"],
        cluster_rules=RBAC_RULES["ClusterRole"],
    )
    config_path = write_config(
        tmp_path / "config.yaml",
        open_registry,
        cpu_pool(namespace, images),
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "controller.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "imagewarden.cli",
                "prepull",
                "run",
                "--config",
                str(config_path),
                "--kubeconfig",
                str(identity.kubeconfig_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--identity",
                "cli-replica",
                "--config-poll-seconds",
                "0.5",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await ready_pods(kube_admin, namespace, "cpu", expected=2)

        async def http_warm() -> dict[str, Any] | None:
            try:
                return await warm(url, "cpu", 2)
            except (aiohttp.ClientError, AssertionError):
                return None

        await wait_for(http_warm, "the CLI controller's /status")
        # Editing the file: one pool patched (new image list), one pool added.
        write_config(config_path, open_registry, two_pools(namespace, images))
        await ready_pods(kube_admin, namespace, "gpu", expected=1)
        # Dropping the cpu pool deletes its DaemonSet.
        slim = two_pools(namespace, images)
        del slim["pools"]["cpu"]
        write_config(config_path, open_registry, slim)

        async def cpu_gone() -> bool:
            return await daemonset(kube_admin, namespace, daemonset_name("cpu")) is None

        await wait_for(cpu_gone, "the CLI controller to delete the cpu pool")
        status = await get_json(f"{url}/status")
        assert status["leader"] is True
        assert status["identity"] == "cli-replica"
        assert status["last_reconcile_errors"] == []
        lease = await client.CoordinationV1Api(kube_admin).read_namespaced_lease(
            "imagewarden-prepull", namespace
        )
        assert lease.spec.holder_identity == "cli-replica"
        # It is not an admin: what RBAC_RULES leaves out is refused.
        async with identity.client() as api:
            with pytest.raises(ApiException) as refused:
                await client.CoreV1Api(api).list_namespaced_secret(namespace)
            assert refused.value.status == 403
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()
    log_text = log_path.read_text(errors="replace")
    assert "forbidden" not in log_text.lower(), log_text[-3000:]
    assert process.returncode == 0, log_text[-3000:]
    # On SIGTERM the Lease was handed back.
    lease = await client.CoordinationV1Api(kube_admin).read_namespaced_lease(
        "imagewarden-prepull", namespace
    )
    assert lease.spec.holder_identity in ("", None)
