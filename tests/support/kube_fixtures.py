"""Pytest fixtures for the Kubernetes test cluster (registered in tests/conftest.py).

Session-scoped (started once, stopped by PID at session end even when tests fail):

* ``kube_cluster`` -> :class:`tests.support.kube.KubeCluster`: etcd, API server, controller
  manager and scheduler are running; ``.kubeconfig_path`` (admin), ``.server``,
  ``.restart_apiserver()``, ``.service_account_identity(...)``, ``.user_identity(...)``.
  Missing binaries make it FAIL with the build command to run.
* ``kube_admin`` -> an admin ``kubernetes_asyncio`` ``ApiClient``.
* ``kube_nodes`` -> :class:`tests.support.kubelet.SimulatedNodes` with
  :data:`tests.support.kubelet.DEFAULT_NODES` registered and schedulable (``cpu-1``, ``cpu-2``,
  ``gpu-1`` tainted ``nvidia.com/gpu``, ``arm-1`` arm64); each node has its own containerd.
  Call ``kube_nodes.add_registry(host, endpoint, credentials)`` before pods pull from a registry.
  Images pulled stay on the nodes for the session: use unique repositories or tags per test when
  "cold" nodes matter.

Function-scoped:

* ``namespace`` -> name of a fresh namespace whose ``default`` ServiceAccount already has its
  token (so pods are admitted at once); deleted afterwards with any cluster-scoped RBAC objects
  made for it. A test that left the API server stopped gets it restarted here.
* ``extra_node`` -> ``await extra_node(NodeSpec(...))`` adds a node for this test only.

``IMAGEWARDEN_KUBE_DIR=/some/dir`` puts the cluster's state (kubeconfig, logs) in a known place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import (
    KubeBinariesMissingError,
    KubeCluster,
    delete_cluster_grants,
    service_account_token,
)
from tests.support.kubelet import DEFAULT_NODES, NodeSpec, SimulatedKubelet, SimulatedNodes


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """The running control plane (see module docstring)."""
    known_dir = os.environ.get("IMAGEWARDEN_KUBE_DIR")
    base_dir = Path(known_dir) if known_dir else tmp_path_factory.mktemp("kube")
    cluster = KubeCluster(base_dir.resolve())
    missing = ""
    try:
        cluster.start()
    except KubeBinariesMissingError as error:
        missing = str(error)
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kube_admin(kube_cluster: KubeCluster) -> AsyncIterator[ApiClient]:
    """An admin ApiClient (built from the admin kubeconfig file, not $KUBECONFIG)."""
    async with kube_cluster.admin_client() as api:
        yield api


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kube_nodes(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SimulatedNodes]:
    """The default simulated nodes, registered and schedulable."""
    nodes = SimulatedNodes(kube_cluster, tmp_path_factory.mktemp("kube-nodes"))
    try:
        await nodes.add_nodes(DEFAULT_NODES)
        yield nodes
    finally:
        await nodes.close()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(
    request: pytest.FixtureRequest, kube_cluster: KubeCluster, kube_admin: ApiClient
) -> AsyncIterator[str]:
    """A fresh namespace for this test, ready for pods; deleted (with its RBAC) afterwards."""
    name = _namespace_name(request.node.name)
    core = client.CoreV1Api(kube_admin)
    await core.create_namespace({"metadata": {"name": name, "labels": {"imagewarden.test": "1"}}})
    try:
        # The ServiceAccount admission plugin refuses pods until `default` has its token.
        await service_account_token(
            kube_admin,
            name,
            "default",
            watch_processes=[kube_cluster.processes["kube-controller-manager"]],
        )
        yield name
    finally:
        if not kube_cluster.processes["kube-apiserver"].running:
            # A test that stopped the API server (and maybe failed) must not break the next one.
            await asyncio.to_thread(kube_cluster.start_apiserver)
        with contextlib.suppress(ApiException):
            await delete_cluster_grants(kube_admin, name)
        with contextlib.suppress(ApiException):
            await core.delete_namespace(name, propagation_policy="Background")


@pytest_asyncio.fixture(loop_scope="session")
async def extra_node(
    kube_nodes: SimulatedNodes,
) -> AsyncIterator[Callable[[NodeSpec], Awaitable[SimulatedKubelet]]]:
    """``await extra_node(NodeSpec("late-1"))``: a node that exists for this test only."""
    added: list[str] = []

    async def add(spec: NodeSpec) -> SimulatedKubelet:
        kubelet = await kube_nodes.add_node(spec)
        added.append(spec.name)
        return kubelet

    try:
        yield add
    finally:
        for name in added:
            if name in kube_nodes.nodes:
                await kube_nodes.remove_node(name)
