"""A JupyterHub proxy that keeps its routes in memory and starts no process.

Test hubs (:mod:`tests.support.hub`) use it instead of configurable-http-proxy (Node.js): the
spawn form and the REST API are served by the hub's own port, and no test goes through the
proxy to a single-user server. Loaded by the hub process as
``c.JupyterHub.proxy_class = "tests.support.hub_proxy.MemoryProxy"``.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.proxy import Proxy


class MemoryProxy(Proxy):  # type: ignore[misc]
    """Routes in a dict; ``should_start = False``, so JupyterHub starts nothing."""

    should_start = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._routes: dict[str, dict[str, Any]] = {}

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        self._routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec: str) -> None:
        self._routes.pop(routespec, None)

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        return dict(self._routes)
