"""The Helm chart against the real Kubernetes test cluster (API server 1.20, RBAC on).

- every object ``helm template --validate`` renders (with the cluster's own capabilities)
  passes a server-side dry-run create, keeps every field it was sent (1.20 has no strict field
  validation, so a field the server does not know would be dropped silently: the test compares
  what comes back), and is then created for real;
- ``helm install`` deploys the release and prints the hub snippet;
- the pre-pull controller, run with the token of the chart's own ServiceAccount and nothing
  else, takes the Lease and creates, patches and deletes its DaemonSets without a single
  refusal; a SubjectAccessReview table shows the account can do that and nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.dynamic import DynamicClient

from imagewarden.prepull.controller import LEASE_NAME, RBAC_RULES
from imagewarden.prepull.render import daemonset_name
from tests.support.helm import (
    CHART_DIR,
    Rendering,
    run_helm,
    template_args,
    values_file,
)
from tests.support.kube import KubeCluster, service_account_token

pytestmark = pytest.mark.cluster

T = TypeVar("T")
WAIT_SECONDS = 60.0
RELEASE = "imagewarden"
CONTROLLER_ACCOUNT = "imagewarden-controller"
CHECKER_ACCOUNT = "imagewarden-checker"
CONTROLLER_IDENTITY = "chart-test"

SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
"""A stand-in for the Prometheus Operator's CRD, so ServiceMonitors can be created."""


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout_seconds: float = WAIT_SECONDS
) -> T:
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.25)


def helm_env(cluster: KubeCluster) -> dict[str, str]:
    return {"KUBECONFIG": str(cluster.kubeconfig_path)}


def render_for_cluster(
    cluster: KubeCluster, namespace: str, values: list[Path], set_values: list[str]
) -> Rendering:
    """``helm template --validate``: rendered with the cluster's capabilities (PDB version)."""
    result = run_helm(
        "template",
        *template_args(values, set_values, namespace=namespace),
        "--validate",
        env=helm_env(cluster),
    )
    assert result.returncode == 0, result.stderr
    return Rendering(result.stdout, [d for d in yaml.safe_load_all(result.stdout) if d])


def dropped_fields(sent: Any, returned: Any, path: str = "") -> list[str]:
    """Paths of ``sent`` that the server did not keep (fields it does not know)."""
    if isinstance(sent, dict):
        if not isinstance(returned, dict):
            return [path or "<root>"]
        problems = []
        for key, value in sent.items():
            if key not in returned:
                problems.append(f"{path}.{key}")
            else:
                problems += dropped_fields(value, returned[key], f"{path}.{key}")
        return problems
    if isinstance(sent, list):
        if not isinstance(returned, list) or len(sent) != len(returned):
            return [path]
        problems = []
        for index, (item, kept) in enumerate(zip(sent, returned, strict=True)):
            problems += dropped_fields(item, kept, f"{path}[{index}]")
        return problems
    return []


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_monitor_crd(kube_admin: ApiClient) -> AsyncIterator[None]:
    extensions = client.ApiextensionsV1Api(kube_admin)
    with contextlib.suppress(ApiException):
        await extensions.create_custom_resource_definition(SERVICE_MONITOR_CRD)

    async def established() -> bool:
        crd = await extensions.read_custom_resource_definition(
            SERVICE_MONITOR_CRD["metadata"]["name"]
        )
        conditions = crd.status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    await wait_for(established, "the ServiceMonitor CRD to be established")
    try:
        yield
    finally:
        with contextlib.suppress(ApiException):
            await extensions.delete_custom_resource_definition(
                SERVICE_MONITOR_CRD["metadata"]["name"]
            )


@pytest.mark.usefixtures("service_monitor_crd")
@pytest.mark.parametrize(
    "example",
    [
        pytest.param("values-cpu-gpu.yaml", id="cpu-gpu"),
        pytest.param("values-everything.yaml", id="everything"),
    ],
)
async def test_every_rendered_object_passes_dry_run_then_creates(
    kube_cluster: KubeCluster,
    kube_admin: ApiClient,
    namespace: str,
    example: str,
    tmp_path: Path,
) -> None:
    rendering = render_for_cluster(
        kube_cluster, namespace, [values_file(example)], [f"config.prepull.namespace={namespace}"]
    )
    [pdb] = rendering.of_kind("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1beta1", "a 1.20 API server serves no policy/v1"
    dynamic = await DynamicClient(kube_admin, cache_file=str(tmp_path / "discovery.json"))
    cluster_scoped: list[str] = []
    try:
        for obj in rendering.objects:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            resource = await dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            target_namespace = obj["metadata"].get("namespace", namespace)
            scope = target_namespace if resource.namespaced else None
            collection = resource.path(namespace=scope)
            item = resource.path(name=obj["metadata"]["name"], namespace=scope)

            status, checked = await api_call(dynamic, "post", collection, obj, dry_run="All")
            assert status == 201, f"server-side dry-run refused {where}: {checked}"
            assert dropped_fields(obj, checked) == [], f"{where}: fields dropped by the server"
            status, _ = await api_call(dynamic, "get", item)
            assert status == 404, f"the dry-run of {where} stored something"

            status, created = await api_call(dynamic, "post", collection, obj)
            assert status == 201, f"creating {where} failed: {created}"
            if scope is None:
                cluster_scoped.append(item)
            status, stored = await api_call(dynamic, "get", item)
            assert status == 200, where
            assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    finally:
        for item in cluster_scoped:
            await api_call(dynamic, "delete", item)


async def api_call(
    dynamic: DynamicClient, method: str, path: str, body: Any = None, **params: Any
) -> tuple[int, dict[str, Any]]:
    """One API request; the status and JSON body (the dynamic client does not raise on 4xx
    when it does not preload the response, so the status is checked here)."""
    response = await dynamic.request(method, path, body=body, serialize=False, **params)
    try:
        document = await response.json()
    finally:
        response.release()
    return response.status, document


@pytest_asyncio.fixture(loop_scope="session")
async def installed_release(
    kube_cluster: KubeCluster, kube_admin: ApiClient, namespace: str
) -> AsyncIterator[subprocess.CompletedProcess[str]]:
    """``helm install`` of the CPU+GPU example into the test's namespace; uninstalled after."""
    core = client.CoreV1Api(kube_admin)
    await core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "imagewarden-api-token"},
            "type": "Opaque",
            "stringData": {"token": "t0ken-for-the-hub"},
        },
    )
    args = template_args(
        [values_file("values-cpu-gpu.yaml")],
        [f"config.prepull.namespace={namespace}"],
        namespace=namespace,
    )
    result = run_helm("install", *args, "--wait=false", env=helm_env(kube_cluster))
    assert result.returncode == 0, result.stderr
    try:
        yield result
    finally:
        uninstall = run_helm(
            "uninstall", RELEASE, "--namespace", namespace, env=helm_env(kube_cluster)
        )
        assert uninstall.returncode == 0, uninstall.stderr


async def test_helm_install_deploys_and_prints_the_hub_snippet(
    installed_release: subprocess.CompletedProcess[str],
    kube_cluster: KubeCluster,
    kube_admin: ApiClient,
    namespace: str,
) -> None:
    output = installed_release.stdout
    assert "STATUS: deployed" in output
    assert f'url="http://imagewarden-checker.{namespace}.svc:8080"' in output
    assert 'token_file="/etc/imagewarden-api-token/token"' in output
    apps = client.AppsV1Api(kube_admin)
    listed = await apps.list_namespaced_deployment(namespace)
    deployments = {deployment.metadata.name for deployment in listed.items}
    assert deployments == {"imagewarden-checker", "imagewarden-controller"}
    status = run_helm(
        "status", RELEASE, "--namespace", namespace, "-o", "json", env=helm_env(kube_cluster)
    )
    assert json.loads(status.stdout)["info"]["status"] == "deployed"
    manifest = run_helm(
        "get", "manifest", RELEASE, "--namespace", namespace, env=helm_env(kube_cluster)
    )
    assert "apiVersion: policy/v1beta1" in manifest.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback URL)
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


async def test_controller_reconciles_with_the_charts_service_account_only(
    installed_release: subprocess.CompletedProcess[str],
    kube_cluster: KubeCluster,
    kube_admin: ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(kube_admin)
    apps = client.AppsV1Api(kube_admin)
    token = await service_account_token(kube_admin, namespace, CONTROLLER_ACCOUNT)
    identity = kube_cluster.identity_for_token(
        f"system:serviceaccount:{namespace}:{CONTROLLER_ACCOUNT}", token
    )
    config_map = await core.read_namespaced_config_map("imagewarden-config", namespace)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config_map.data["config.yaml"])
    config = yaml.safe_load(config_map.data["config.yaml"])
    assert config["prepull"]["namespace"] == namespace

    port = _free_port()
    log_path = tmp_path / "controller.log"
    command = [
        sys.executable,
        "-c",
        "import sys; from imagewarden.cli import main; sys.exit(main())",
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
        CONTROLLER_IDENTITY,
        "--no-resolve",
        "--config-poll-seconds",
        "0.5",
    ]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:

        async def daemonsets() -> dict[str, Any] | None:
            if process.returncode is not None:
                pytest.fail(f"controller exited {process.returncode}:\n{log_path.read_text()}")
            found = await apps.list_namespaced_daemon_set(namespace)
            by_name = {ds.metadata.name: ds for ds in found.items}
            return by_name or None

        wanted = {daemonset_name("cpu"), daemonset_name("gpu")}
        await wait_for(
            lambda: _when(daemonsets(), lambda d: set(d) == wanted),
            "the controller to create both pools' DaemonSets",
        )
        ready_url = f"http://127.0.0.1:{port}/readyz"
        await wait_for(
            lambda: _async(_http_status(ready_url) == 200), "the controller's /readyz to say ok"
        )
        coordination = client.CoordinationV1Api(kube_admin)
        lease = await coordination.read_namespaced_lease(LEASE_NAME, namespace)
        assert lease.spec.holder_identity == CONTROLLER_IDENTITY

        # Change the config as a helm upgrade would: drop the GPU pool, add an image to CPU.
        config["prepull"]["pools"].pop("gpu")
        config["prepull"]["pools"]["cpu"]["images"].append("quay.io/jupyter/base-notebook:2024")
        config_path.write_text(yaml.safe_dump(config))

        def cpu_patched(found: dict[str, Any]) -> bool:
            if set(found) != {daemonset_name("cpu")}:
                return False
            init = found[daemonset_name("cpu")].spec.template.spec.init_containers
            return any("base-notebook" in container.image for container in init)

        await wait_for(
            lambda: _when(daemonsets(), cpu_patched),
            "the controller to delete the GPU pool and patch the CPU pool",
        )
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()
    log_text = log_path.read_text()
    for refusal in ("403", "Forbidden", "forbidden"):
        assert refusal not in log_text, f"the API server refused a call:\n{log_text}"


async def _async(value: T) -> T:
    return value


async def _when(source: Awaitable[T | None], condition: Callable[[T], bool]) -> T | None:
    value = await source
    return value if value is not None and condition(value) else None


def _allowed_grants() -> list[tuple[str, str, str | None, str, bool]]:
    """(group, resource, name, verb, namespaced) of every grant RBAC_RULES lists."""
    grants = []
    for kind, namespaced in (("Role", True), ("ClusterRole", False)):
        for rule in RBAC_RULES[kind]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for name in rule.get("resourceNames") or [None]:
                        for verb in rule["verbs"]:
                            grants.append((group, resource, name, verb, namespaced))
    return grants


DENIED = [
    pytest.param("", "secrets", None, "get", True, id="read-secrets"),
    pytest.param("", "secrets", None, "list", True, id="list-secrets"),
    pytest.param("", "pods", None, "create", True, id="create-pods"),
    pytest.param("", "pods", None, "delete", True, id="delete-pods"),
    pytest.param("", "configmaps", None, "get", True, id="read-configmaps"),
    pytest.param("apps", "daemonsets", None, "update", True, id="update-daemonsets"),
    pytest.param("apps", "deployments", None, "patch", True, id="patch-deployments"),
    pytest.param("coordination.k8s.io", "leases", "other-lease", "update", True, id="other-lease"),
    pytest.param("coordination.k8s.io", "leases", LEASE_NAME, "delete", True, id="delete-lease"),
    pytest.param("", "nodes", None, "patch", False, id="patch-nodes"),
    pytest.param("", "nodes", None, "delete", False, id="delete-nodes"),
    pytest.param("rbac.authorization.k8s.io", "roles", None, "create", True, id="create-roles"),
    pytest.param("apps", "daemonsets", None, "create", False, id="daemonsets-elsewhere"),
]


async def _review(
    api: ApiClient,
    user: str,
    namespace: str | None,
    group: str,
    resource: str,
    name: str | None,
    verb: str,
) -> bool:
    attributes: dict[str, Any] = {"group": group, "resource": resource, "verb": verb}
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    review = await client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": attributes},
        }
    )
    return bool(review.status.allowed)


@pytest.mark.usefixtures("installed_release")
async def test_service_accounts_get_exactly_what_the_controller_uses(
    kube_admin: ApiClient, namespace: str
) -> None:
    controller = f"system:serviceaccount:{namespace}:{CONTROLLER_ACCOUNT}"
    checker = f"system:serviceaccount:{namespace}:{CHECKER_ACCOUNT}"
    granted = _allowed_grants()
    assert granted
    for group, resource, name, verb, namespaced in granted:
        where = namespace if namespaced else None
        assert await _review(kube_admin, controller, where, group, resource, name, verb), (
            f"controller may not {verb} {group}/{resource} {name or ''}"
        )
        assert not await _review(kube_admin, checker, where, group, resource, name, verb), (
            f"the checker may {verb} {resource}; it should never call the API"
        )
    for param in DENIED:
        group, resource, name, verb, namespaced = param.values
        where = namespace if namespaced else None
        if param.id == "daemonsets-elsewhere":
            where = "kube-system"
        assert not await _review(kube_admin, controller, where, group, resource, name, verb), (
            f"controller may {verb} {group}/{resource} ({param.id}): more than it uses"
        )


async def test_dropped_field_check_sees_fields_the_server_ignores(
    kube_admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Without strict field validation (1.20), an unknown field is accepted and dropped: the
    dry-run test above can only catch it by comparing, which is what this shows it does."""
    dynamic = await DynamicClient(kube_admin, cache_file=str(tmp_path / "discovery.json"))
    resource = await dynamic.resources.get(api_version="v1", kind="Service")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "probe"},
        "spec": {"ports": [{"port": 80, "targetPot": 8080}], "selector": {"a": "b"}},
    }
    status, returned = await api_call(
        dynamic, "post", resource.path(namespace=namespace), service, dry_run="All"
    )
    assert status == 201, returned
    assert dropped_fields(service, returned) == [".spec.ports[0].targetPot"]
    assert CHART_DIR.is_dir()
