"""End to end: a real JupyterHub with KubeSpawner and imagewarden's hooks, a real API server.

The hub process (``python -m jupyterhub``, dummy authenticator, loopback ports) runs
KubeSpawner against the Kubernetes test cluster (``kube_cluster``, admin kubeconfig, a fresh
``namespace``); the simulated kubelets (``kube_nodes``) pull what the pod names, from the local
registry that plays quay.io. A user logs in and posts the spawn form with an "Other" image,
exactly what the browser posts when "Other..." is picked (the select's own name is removed):

* bad image: the answer is the spawn form again (HTTP 400) with the sentence naming the image
  and the reason, and the API server holds no pod;
* good image: the pod the API server stores runs ``quay.io/…@sha256:…``, the digest that was
  checked, and a node pulls exactly that.

Both modes run: the hub asks ``imagewarden serve`` (a process) over HTTP with a token, or
checks in the hub process with the same config file.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from tests.support.hub import (
    HubUser,
    RunningHub,
    RunningService,
    hub_settings_document,
    profile_list,
)
from tests.support.kube import KubeCluster
from tests.support.kubelet import SimulatedNodes
from tests.support.registry import RunningRegistry
from tests.support.registry_fixtures import SeededImages

pytestmark = pytest.mark.cluster

PANGEO = "quay.io/pangeo/pangeo-notebook"
SERVICE_TOKEN = "e2e-hub-service-token-7c21"
POD_TIMEOUT_SECONDS = 90.0

StartHub = Callable[..., Awaitable[RunningHub]]
StartService = Callable[[Path], Awaitable[RunningService]]


@pytest.fixture(params=["http", "in_process"])
async def hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    jupyterhub_process: StartHub,
    imagewarden_service: StartService,
    kube_cluster: KubeCluster,
    kube_nodes: SimulatedNodes,
    namespace: str,
    token_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seeded_images: SeededImages,
) -> RunningHub:
    """A hub spawning into this test's namespace, checking images in the parametrized mode."""
    # The nodes pull "quay.io/…" and "docker.io/…" from the same local registries the checker
    # resolves against, so the digest that was checked is the one that is pulled.
    kube_nodes.add_registry("quay.io", token_registry.url)
    kube_nodes.add_registry("docker.io", open_registry.url)
    document = hub_settings_document(token_registry.url, open_registry.url)
    config_path = tmp_path / "imagewarden.yaml"
    if request.param == "http":
        token_file = tmp_path / "token"
        token_file.write_text(SERVICE_TOKEN)
        document["service"] = {"token_file": str(token_file)}
        config_path.write_text(yaml.safe_dump(document))
        service = await imagewarden_service(config_path)
        hook_line = f"configure(c, url={service.url!r}, token_file={str(token_file)!r})"
    else:
        config_path.write_text(yaml.safe_dump(document))
        hook_line = f"configure(c, config_file={str(config_path)!r})"
    config = f"""
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.image = "quay.io/jupyter/base-notebook:2024-01-15"
c.KubeSpawner.profile_list = {profile_list()!r}

from imagewarden.hub import configure
{hook_line}
"""
    return await jupyterhub_process(config, env={"KUBECONFIG": str(kube_cluster.kubeconfig_path)})


async def pods(api: ApiClient, namespace: str) -> list[Any]:
    listed = await client.CoreV1Api(api).list_namespaced_pod(namespace)
    items: list[Any] = listed.items
    return items


def page_text(page: str) -> str:
    """The page's text as a person reads it: tags dropped, entities decoded, spaces joined."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


@pytest.mark.parametrize(
    ("typed", "in_message"),
    [
        pytest.param(
            f"{PANGEO}:latest",
            "blocked by the rule quay.io/pangeo/*:latest",
            id="denied-by-policy",
        ),
        pytest.param(f"{PANGEO}:2099.01.01", "2023.09.12", id="missing-tag-names-closest"),
        pytest.param(
            'quay.io/pangeo/<img src=x onerror="alert(1)">',
            "not a valid image reference",
            id="markup-is-shown-as-text",
        ),
    ],
)
async def test_bad_other_image_is_refused_on_the_spawn_form_and_no_pod_is_created(
    hub: RunningHub, kube_admin: ApiClient, namespace: str, typed: str, in_message: str
) -> None:
    async with HubUser(hub, "alice") as alice:
        await alice.login()
        form = await alice.spawn_form()
        assert 'data-name="profile-option-cpu--image--unlisted-choice"' in form
        status, page, location = await alice.post_spawn(
            {"profile": "cpu", "profile-option-cpu--image--unlisted-choice": typed}
        )
    assert (status, location) == (400, None), page[-3000:]
    text = page_text(page)
    assert f"Cannot start a server with the image “{typed}”" in text
    assert in_message in text
    assert 'id="profile-item-cpu"' in page, "the spawn form is shown again"
    assert "<img src=x" not in page, "typed markup must be escaped"
    await asyncio.sleep(1.0)  # nothing may be created late either
    assert await pods(kube_admin, namespace) == []


async def test_good_other_image_runs_the_checked_digest(
    hub: RunningHub, kube_admin: ApiClient, namespace: str, seeded_images: SeededImages
) -> None:
    digest = seeded_images["pangeo/pangeo-notebook:2023.09.11"]
    async with HubUser(hub, "bob") as bob:
        await bob.login()
        status, page, location = await bob.post_spawn(
            {"profile": "cpu", "profile-option-cpu--image--unlisted-choice": f"{PANGEO}:2023.09.11"}
        )
        assert status == 302, page_text(page)[-2000:]
        assert location is not None
        assert "/hub/spawn-pending/bob" in location
        pod = await wait_for_pod(kube_admin, namespace, "jupyter-bob", running=True)
        await bob.api("DELETE", "/users/bob/server")
    notebook = next(c for c in pod.spec.containers if c.name == "notebook")
    assert notebook.image == f"{PANGEO}@{digest}"
    # The simulated kubelet pulled exactly that digest.
    (status_,) = [s for s in pod.status.container_statuses if s.name == "notebook"]
    assert status_.image_id.endswith(digest)


async def test_rest_api_spawn_is_checked_the_same_way(
    hub: RunningHub, kube_admin: ApiClient, namespace: str, seeded_images: SeededImages
) -> None:
    async with HubUser(hub, "carol") as carol:
        await carol.login()  # JupyterHub knows the user from then on
        refused_status, refused = await carol.api(
            "POST",
            "/users/carol/server",
            {
                "profile": "gpu",
                "image--unlisted-choice": "quay.io/jupyter/base-notebook:2024-01-15",
            },
        )
        assert await pods(kube_admin, namespace) == []
        allowed_status, _ = await carol.api(
            "POST",
            "/users/carol/server",
            {"profile": "gpu", "image--unlisted-choice": f"{PANGEO}:2023.09.12"},
        )
        pod = await wait_for_pod(kube_admin, namespace, "jupyter-carol", running=False)
        await carol.api("DELETE", "/users/carol/server")
    assert refused_status == 400
    assert "quay.io/jupyter/base-notebook:2024-01-15" in refused["message"]
    assert "for the gpu profile" in refused["message"]
    assert allowed_status in (201, 202)
    notebook = next(c for c in pod.spec.containers if c.name == "notebook")
    assert notebook.image == f"{PANGEO}@{seeded_images['pangeo/pangeo-notebook:2023.09.12']}"
    assert notebook.resources.limits["nvidia.com/gpu"] == "1"


async def wait_for_pod(api: ApiClient, namespace: str, name: str, *, running: bool) -> Any:
    """The pod as the API server stores it, once it exists (and runs, if asked)."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + POD_TIMEOUT_SECONDS
    last: Any = None
    while time.monotonic() < deadline:
        for pod in (await core.list_namespaced_pod(namespace)).items:
            if pod.metadata.name == name:
                last = pod
                if not running or pod.status.phase == "Running":
                    return pod
        await asyncio.sleep(0.25)
    raise AssertionError(f"pod {name} not {'running' if running else 'created'}: {last}")
