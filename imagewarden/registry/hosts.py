"""Registry host → endpoint URL, honouring mirrors and plain-HTTP endpoints from config.

``docker.io`` is served by ``https://registry-1.docker.io``; every other host by ``https://HOST``
unless ``registries.HOST.endpoint`` names a mirror, pull-through cache or air-gapped copy. Plain
HTTP is used only when an endpoint is written out as ``http://``.
"""

from __future__ import annotations

from collections.abc import Mapping

from yarl import URL

from imagewarden.config import RegistrySettings
from imagewarden.reference import canonical_host

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = URL("https://registry-1.docker.io")


def endpoint_for(host: str, registries: Mapping[str, RegistrySettings]) -> URL:
    """The base URL serving ``/v2/`` for ``host`` (a normalized reference's domain)."""
    host = canonical_host(host)
    configured = registries.get(host)
    if configured and configured.endpoint:
        return URL(configured.endpoint)
    if host == DOCKER_HUB:
        return DOCKER_HUB_ENDPOINT
    return URL(f"https://{host}")


def same_origin(left: URL, right: URL) -> bool:
    """Whether two URLs share scheme, host and port: credentials never cross an origin."""
    return (left.scheme, left.host, left.port) == (right.scheme, right.host, right.port)
