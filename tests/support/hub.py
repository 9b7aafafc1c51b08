"""JupyterHub and KubeSpawner for tests: a loadable kubeconfig, profile lists, a hub process.

Fixtures (registered in ``tests/conftest.py``):

* ``spawner_kubeconfig`` (function; the file itself is session-scoped): a kubeconfig that
  loads but points nowhere (``https://127.0.0.1:9``), installed for the test as ``$KUBECONFIG``
  *and* as kubernetes_asyncio's default location (which it reads at import time), so
  ``KubeSpawner(_mock=True, …)`` can be built in a running loop without a cluster. KubeSpawner
  loads a kubeconfig once per process (``lru_cache``), so in-process spawners never talk to a
  real cluster; the end-to-end tests run the hub as a separate process with the real cluster's
  kubeconfig.
* ``jupyterhub_process`` (function): ``await jupyterhub_process(config_text, env=…)`` starts
  ``python -m jupyterhub -f FILE`` on free loopback ports and returns a :class:`RunningHub`;
  every hub it started is stopped by PID at the end of the test, even on failure.

The hub runs without configurable-http-proxy (a Node.js program not needed to test the spawn
form): :class:`tests.support.hub_proxy.MemoryProxy` keeps the route table in memory and the
tests talk to the hub's own port, which serves every ``/hub/`` page.

:data:`PROFILE_LIST` is a realistic z2jh ``singleuser.profileList``: CPU and GPU profiles with an
image option of two listed choices and an "Other" box, and an arm64 profile whose "Other" box
takes a quay.io path (``quay.io/{value}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.support.registry import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
"""Screenshots and hub logs that tests keep (git-ignored)."""
HUB_READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0

IMAGE_CHOICES: dict[str, Any] = {
    "pangeo": {
        "display_name": "Pangeo notebook 2023.09.11",
        "default": True,
        "kubespawner_override": {"image": "quay.io/pangeo/pangeo-notebook:2023.09.11"},
    },
    "base": {
        "display_name": "Jupyter base notebook",
        "kubespawner_override": {"image": "quay.io/jupyter/base-notebook:2024-01-15"},
    },
}
OTHER_IMAGE: dict[str, Any] = {
    "enabled": True,
    "display_name": "Image (for example quay.io/org/name:tag)",
    "display_name_in_choices": "Other...",
    "kubespawner_override": {"image": "{value}"},
}
IMAGE_OPTION: dict[str, Any] = {
    "display_name": "Image",
    "choices": IMAGE_CHOICES,
    "unlisted_choice": OTHER_IMAGE,
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PROFILE_LIST: list[dict[str, Any]] = [
    {
        "display_name": "CPU: 2 cores, 8 GB",
        "slug": "cpu",
        "default": True,
        "kubespawner_override": {"cpu_limit": 2, "mem_limit": "8G"},
        "profile_options": {"image": IMAGE_OPTION},
    },
    {
        "display_name": "GPU: 1 x T4",
        "slug": "gpu",
        "kubespawner_override": {
            "extra_resource_limits": {"nvidia.com/gpu": "1"},
            "node_selector": {"imagewarden.test/pool": "gpu"},
            "tolerations": [GPU_TOLERATION],
        },
        "profile_options": {"image": IMAGE_OPTION},
    },
    {
        "display_name": "ARM: 2 cores",
        "slug": "arm",
        "kubespawner_override": {"node_selector": {"kubernetes.io/arch": "arm64"}},
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {"pangeo": IMAGE_CHOICES["pangeo"]},
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Image on quay.io (org/name:tag)",
                    "kubespawner_override": {"image": "quay.io/{value}"},
                },
            }
        },
    },
]


def profile_list() -> list[dict[str, Any]]:
    """A fresh deep copy of :data:`PROFILE_LIST` (KubeSpawner mutates what it is given)."""
    return copy.deepcopy(PROFILE_LIST)


def hub_settings_document(quay_endpoint: str, docker_endpoint: str) -> dict[str, Any]:
    """The imagewarden config the hub tests use: quay.io and docker.io served locally, a GPU
    profile that admits only Pangeo images and an arm64 profile."""
    return {
        "registries": {
            "quay.io": {"endpoint": quay_endpoint},
            "docker.io": {"endpoint": docker_endpoint},
        },
        "policy": {
            "allow": ["quay.io/pangeo/*", "quay.io/jupyter/*", "docker.io/library/*"],
            "deny": ["quay.io/pangeo/*:latest"],
        },
        "profiles": {
            "gpu": {
                "platform": "linux/amd64",
                "policy": {"allow": ["quay.io/pangeo/*"], "mode": "replace"},
            },
            "arm": {"platform": "linux/arm64"},
        },
    }


# --- a kubeconfig that loads, for KubeSpawner(_mock=True) -----------------------------------


@pytest.fixture(scope="session")
def spawner_kubeconfig_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig that loads but points nowhere (``https://127.0.0.1:9``)."""
    path = tmp_path_factory.mktemp("spawner-kubeconfig") / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "nobody", "user": {"token": "unused"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "nowhere", "user": "nobody"}}],
                "current-context": "mock",
            }
        )
    )
    return path


@pytest.fixture
def spawner_kubeconfig(spawner_kubeconfig_file: Path) -> Iterator[Path]:
    """For this test: ``$KUBECONFIG`` and kubernetes_asyncio's import-time default location
    point at :func:`spawner_kubeconfig_file`. Afterwards both, and the client's default
    Configuration that KubeSpawner's loader sets, are put back, so tests that talk to the real
    test cluster through defaults are not pointed at nowhere."""
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import kube_config

    saved_env = os.environ.get("KUBECONFIG")
    saved_location = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    saved_default = Configuration._default
    os.environ["KUBECONFIG"] = str(spawner_kubeconfig_file)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(spawner_kubeconfig_file)
    try:
        yield spawner_kubeconfig_file
    finally:
        Configuration._default = saved_default
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_location
        if saved_env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved_env


# --- a JupyterHub process ------------------------------------------------------------------


@dataclass
class RunningHub:
    """A ``jupyterhub`` process on 127.0.0.1."""

    port: int
    work_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    api_token: str
    """A token of the ``imagewarden-test`` service with admin scopes, for the REST API."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL; every page is under ``/hub/``."""
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


HUB_CONFIG_HEADER = """\
# Written by tests/support/hub.py: a loopback hub with KubeSpawner and imagewarden's hooks.
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_connect_url = "http://127.0.0.1:{port}"
c.JupyterHub.proxy_class = "tests.support.hub_proxy.MemoryProxy"
c.JupyterHub.db_url = "sqlite:///{work_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work_dir}/cookie_secret"
c.JupyterHub.pid_file = "{work_dir}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.JupyterHub.services = [{{"name": "imagewarden-test", "api_token": "{api_token}"}}]
c.JupyterHub.load_roles = [
    {{"name": "imagewarden-test", "scopes": ["admin:users", "admin:servers"],
      "services": ["imagewarden-test"]}},
]
c.JupyterHub.log_level = "DEBUG"
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 30
"""


@pytest_asyncio.fixture(loop_scope="session")
async def jupyterhub_process(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[RunningHub]]]:
    """Start hubs with ``await jupyterhub_process(config_body, env={...})``; stopped by PID."""
    started: list[RunningHub] = []

    async def start(config_body: str, *, env: Mapping[str, str] | None = None) -> RunningHub:
        work_dir = tmp_path / f"hub-{len(started)}"
        work_dir.mkdir()
        port = free_port()
        api_token = os.urandom(16).hex()
        config_path = work_dir / "jupyterhub_config.py"
        config_path.write_text(
            HUB_CONFIG_HEADER.format(port=port, work_dir=work_dir, api_token=api_token)
            + "\n"
            + config_body
        )
        log_path = work_dir / "jupyterhub.log"
        process = _start_process(config_path, log_path, env or {})
        hub = RunningHub(port, work_dir, process, log_path, api_token)
        started.append(hub)
        await wait_until_up(hub)
        return hub

    try:
        yield start
    finally:
        for hub in started:
            hub.stop()
            keep_log(hub)


def _start_process(
    config_path: Path, log_path: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config_path)],
            cwd=config_path.parent,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": python_path, **env},
        )


def keep_log(hub: RunningHub) -> None:
    """Copy the hub's log under test-artifacts/ so a failure can be read after the run."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        (ARTIFACTS_DIR / f"jupyterhub-{hub.port}.log").write_text(hub.log_text())


async def wait_until_up(hub: RunningHub) -> None:
    deadline = time.monotonic() + HUB_READY_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if hub.process.poll() is not None:
                raise AssertionError(f"jupyterhub exited early:\n{hub.log_text()[-6000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{hub.url}/hub/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"jupyterhub never answered:\n{hub.log_text()[-6000:]}")


_XSRF_FIELD = re.compile(r'name="_xsrf"\s+value="([^"]+)"')
_SPAWN_FORM_ACTION = re.compile(r'<form[^>]*id="spawn_form"[^>]*action="([^"]+)"', re.DOTALL)


class HubUser:
    """A browser-like session of one user: cookies, XSRF token, form posts."""

    def __init__(self, hub: RunningHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> HubUser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def _xsrf(self, path: str) -> str:
        async with self.session.get(f"{self.hub.url}{path}") as response:
            text = await response.text()
            assert response.status == 200, text[-2000:]
        match = _XSRF_FIELD.search(text)
        assert match, f"no _xsrf field on {path}"
        return match.group(1)

    async def login(self) -> None:
        xsrf = await self._xsrf("/hub/login")
        async with self.session.post(
            f"{self.hub.url}/hub/login?next=",
            data={"username": self.name, "password": "any", "_xsrf": xsrf},
            allow_redirects=False,
        ) as response:
            assert response.status == 302, await response.text()

    async def spawn_form(self) -> str:
        async with self.session.get(f"{self.hub.url}/hub/spawn") as response:
            text = await response.text()
            assert response.status == 200, text[-2000:]
            return text

    async def post_spawn(self, form: Mapping[str, str]) -> tuple[int, str, str | None]:
        """POST the spawn form as a browser does (multipart, to the form's own action URL,
        which carries the XSRF token); returns (status, page, redirect location)."""
        page = await self.spawn_form()
        match = _SPAWN_FORM_ACTION.search(page)
        assert match, "no spawn form on /hub/spawn"
        action = html.unescape(match.group(1))
        data = aiohttp.FormData(list(form.items()), default_to_multipart=True)
        async with self.session.post(
            f"{self.hub.url}{action}", data=data, allow_redirects=False
        ) as response:
            return response.status, await response.text(), response.headers.get("Location")

    async def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """Call the hub's REST API with the test service's admin token."""
        async with self.session.request(
            method,
            f"{self.hub.url}/hub/api{path}",
            json=body,
            headers={"Authorization": f"token {self.hub.api_token}"},
        ) as response:
            text = await response.text()
            try:
                import json

                return response.status, json.loads(text) if text else None
            except ValueError:
                return response.status, text


# --- the checker service as its own process ------------------------------------------------


@dataclass
class RunningService:
    """An ``imagewarden serve`` process on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _start_service_process(config_path: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "imagewarden.cli", "serve", "--config", str(config_path)]
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={key: value for key, value in os.environ.items() if key != "IMAGEWARDEN_TOKEN"},
        )


@pytest_asyncio.fixture(loop_scope="session")
async def imagewarden_service(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Path], Awaitable[RunningService]]]:
    """``await imagewarden_service(config_path)`` starts ``imagewarden serve``; stopped by PID."""
    started: list[RunningService] = []

    async def start(config_path: Path) -> RunningService:
        port = free_port()
        log_path = tmp_path / f"imagewarden-serve-{port}.log"
        process = _start_service_process(config_path, port, log_path)
        service = RunningService(port, process, log_path)
        started.append(service)
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if service.process.poll() is not None:
                    raise AssertionError(f"imagewarden serve exited: {_read(log_path)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{service.url}/readyz") as response:
                        if response.status == 200:
                            return service
                await asyncio.sleep(0.05)
        raise AssertionError(f"imagewarden serve never became ready: {_read(log_path)}")

    try:
        yield start
    finally:
        for service in started:
            service.stop()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]
