"""Fixtures for the node agent's tests: real engines, a registry proxy that can stall, configs.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Session-scoped engines, both on
loopback sockets under temp dirs and stopped by PID:

* ``podman_service``: ``podman system service`` serving the Docker Engine API
  (:mod:`tests.support.podman`).
* ``containerd_node``: containerd with its CRI plugin (:mod:`tests.support.containerd`); the
  fixture registries are already in its hosts directory, other registries are added with
  ``containerd_node.add_registry(host, url)``.

:class:`RegistryProxy` sits between an engine and a real registry and forwards every request,
but can slow blob downloads to a given rate (so parallel pulls overlap measurably and engines
report byte progress) or hang blob downloads of chosen repositories after their first bytes
(a registry that stalls mid-pull). :func:`write_agent_config` writes the YAML config the
agent reads (registries with password files, one pool), and :func:`open_agent` builds a
:class:`~imagewarden.prepull.agent.NodeAgent` over a real RegistryClient and engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from multidict import CIMultiDict

from imagewarden.config import load_config
from imagewarden.metrics import Metrics
from imagewarden.prepull.agent import AgentSettings, NodeAgent
from imagewarden.prepull.engines import EngineKind, open_engine
from imagewarden.registry import RegistryClient
from tests.support.containerd import Containerd, start_containerd, wait_for_cri
from tests.support.podman import PodmanService, start_podman_service
from tests.support.registry import RunningRegistry
from tests.support.tokenserver import BackgroundApp

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)
_CHUNK_BYTES = 64 * 1024


class RegistryProxy:
    """An HTTP proxy in front of one registry that can throttle or stall blob downloads.

    Runs on its own loop in a background thread (see :class:`BackgroundApp`), so engines in
    other processes and sync or async tests can all use it. Attributes may be changed while it
    runs: ``rate_bytes_per_second`` (None: full speed) throttles every blob response;
    ``stalled_repos`` makes blob GETs of those repositories send their first chunk and then
    hang until :meth:`release` (or until the client gives up).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate_bytes_per_second: float | None = None
        self.stalled_repos: set[str] = set()
        self.blob_requests: Counter[str] = Counter()
        """Blob GETs per repository."""
        self.stalled_now = 0
        """Blob responses hanging at this moment."""
        self._stall_seen = threading.Event()
        self._release: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server = BackgroundApp(self._make_app(), name=f"registry-proxy-{upstream}")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        return self._server.url

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry host in image names pulled through the proxy."""
        return self.url.removeprefix("http://")

    def start(self) -> RegistryProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.stop()

    def wait_for_stall(self, timeout_seconds: float = 30.0) -> bool:
        """Block until some blob download hangs (the engine is mid-pull)."""
        return self._stall_seen.wait(timeout_seconds)

    def release(self) -> None:
        """Let every hanging blob download continue, and stall no more repositories."""
        self.stalled_repos = set()
        loop, event = self._server.loop, self._release
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        app.router.add_route("*", "/{path:.*}", self._forward)
        return app

    async def _open(self, app: web.Application) -> None:
        self._release = asyncio.Event()
        # No pooled upstream connections: after a registry restart a pooled one is dead, and
        # the engine would see a 502 from the proxy that no real registry restart causes.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
            auto_decompress=False,
        )

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def _blob_repo(request: web.Request) -> str | None:
        path = request.path
        if request.method != "GET" or "/blobs/" not in path or not path.startswith("/v2/"):
            return None
        return path[len("/v2/") : path.index("/blobs/")]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        assert self._release is not None
        # Keep repeated headers: engines send one Accept header per manifest media type.
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        body = await request.read()
        repo = self._blob_repo(request)
        if repo is not None:
            self.blob_requests[repo] += 1
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ClientError as error:
            return web.Response(status=502, text=f"proxy: upstream unreachable: {error}")
        async with upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            first = True
            try:
                async for chunk in upstream.content.iter_chunked(_CHUNK_BYTES):
                    await response.write(chunk)
                    if repo is not None and first and repo in self.stalled_repos:
                        await self._hang()
                    first = False
                    rate = self.rate_bytes_per_second
                    if repo is not None and rate:
                        await asyncio.sleep(len(chunk) / rate)
            except (aiohttp.ClientError, ConnectionError):
                # The upstream went away mid-body (registry restarted): cut the client off too.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response

    async def _hang(self) -> None:
        assert self._release is not None
        self.stalled_now += 1
        self._stall_seen.set()
        try:
            await self._release.wait()
        finally:
            self.stalled_now -= 1


@contextlib.contextmanager
def registry_proxy(upstream: RunningRegistry | str) -> Iterator[RegistryProxy]:
    """A started :class:`RegistryProxy` in front of ``upstream``, stopped afterwards."""
    url = upstream if isinstance(upstream, str) else upstream.url
    proxy = RegistryProxy(url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def write_agent_config(
    path: Path,
    *,
    pools: Mapping[str, Sequence[str]],
    registries: Mapping[str, tuple[str, tuple[str, str] | None]],
    platform: str = "linux/amd64",
) -> Path:
    """Write an imagewarden config: ``registries`` maps host -> (endpoint, credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, str]] = {}
    for index, (host, (endpoint, credentials)) in enumerate(sorted(registries.items())):
        entry = {"endpoint": endpoint}
        if credentials is not None:
            password_file = path.parent / f"password-{index}"
            password_file.write_text(credentials[1])
            entry |= {"username": credentials[0], "password_file": str(password_file)}
        entries[host] = entry
    document = {
        "registries": entries,
        "prepull": {
            "platform": platform,
            # Pools must select different nodes; the agent itself ignores the selector.
            "pools": {
                name: {"nodeSelector": {"imagewarden.test/pool": name}, "images": list(images)}
                for name, images in pools.items()
            },
        },
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def registry_entry(registry: RunningRegistry, *, credentials: bool = True) -> tuple[str, Any]:
    """``(host, (endpoint, credentials))`` for :func:`write_agent_config`."""
    return registry.host, (registry.url, registry.credentials if credentials else None)


@contextlib.asynccontextmanager
async def open_agent(
    config_path: Path,
    pool: str,
    engine: EngineKind,
    address: str,
    **settings: Any,
) -> AsyncIterator[NodeAgent]:
    """A NodeAgent for ``pool`` of ``config_path`` over a real registry client and engine."""
    config = load_config(config_path)
    images = list(config.prepull.pools[pool].images)
    agent_settings = AgentSettings(
        pool=pool, engine=engine, engine_address=address, listen_port=None, **settings
    )
    metrics = Metrics()
    engine_client = open_engine(
        engine,
        address,
        max_parallel_pulls=agent_settings.max_parallel_pulls,
        stall_timeout_seconds=agent_settings.stall_timeout_seconds,
        pull_timeout_seconds=agent_settings.pull_timeout_seconds,
    )
    async with RegistryClient(config, metrics=metrics) as client:
        agent = NodeAgent(
            images, agent_settings, resolver=client, engine=engine_client, metrics=metrics
        )
        try:
            yield agent
        finally:
            await agent.close()


@pytest.fixture(scope="session")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    """podman's Docker API service; its storage is shared by every test of the session."""
    service = start_podman_service(tmp_path_factory.mktemp("podman"))
    try:
        yield service
    finally:
        service.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def containerd_node(
    tmp_path_factory: pytest.TempPathFactory,
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
) -> AsyncIterator[Containerd]:
    """containerd with CRI, knowing the open and token registries (plain HTTP)."""
    node = start_containerd(tmp_path_factory.mktemp("containerd-agent"))
    try:
        for registry in (open_registry, token_registry):
            node.add_registry(registry.host, registry.url)
        await wait_for_cri(node)
        yield node
    finally:
        node.stop()
