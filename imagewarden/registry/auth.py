"""Registry authentication without I/O of its own: challenges, token cache, credentials.

- :func:`parse_challenges` reads ``WWW-Authenticate`` (several challenges in one header, quoted
  values with commas, case-insensitive scheme and parameter names).
- :class:`TokenCache` keeps bearer tokens per (realm, service, scope, identity) until they expire.
- :class:`CredentialStore` answers "which username/password belongs to this registry host?"
  from static config, a Docker ``config.json`` (credential helpers honoured, through the ``docker``
  package) and Kubernetes ``dockerconfigjson`` files. It is asked by host only, so credentials
  are never offered to another host (a redirect target, a token realm elsewhere).

:mod:`imagewarden.registry.client` does the HTTP round trips these decisions call for.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagewarden.config import CredentialsSettings, RegistrySettings
from imagewarden.errors import ConfigError, InvalidRegistryResponseError

log = logging.getLogger(__name__)

_TOKEN_CHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"  # noqa: S105 - RFC 9110 token characters
_CHALLENGE_PIECE = re.compile(
    rf"\s*(?:(?P<key>{_TOKEN_CHAR}+)\s*=\s*(?:\"(?P<quoted>(?:[^\"\\]|\\.)*)\"|(?P<bare>[^\s,]*))"
    rf"|(?P<scheme>{_TOKEN_CHAR}+)(?=\s|,|$))\s*,?"
)
_MAX_CHALLENGE_HEADER = 8192
DEFAULT_TOKEN_SECONDS = 60.0
"""Lifetime of a token whose answer does not say (the distribution token spec's default)."""
_TOKEN_EXPIRY_MARGIN_SECONDS = 5.0
_CREDENTIAL_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """Lower-case: ``bearer`` or ``basic``."""
    params: Mapping[str, str]
    """Parameter names lower-case (``realm``, ``service``, ``scope``, ``error``)."""


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """All challenges in one ``WWW-Authenticate`` value; malformed pieces are skipped."""
    header = header[:_MAX_CHALLENGE_HEADER]
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    position = 0
    while position < len(header):
        match = _CHALLENGE_PIECE.match(header, position)
        if not match or match.end() == position:
            position += 1  # skip a stray character rather than fail the whole header
            continue
        position = match.end()
        if match.group("scheme"):
            if scheme is not None:
                challenges.append(Challenge(scheme, params))
            scheme, params = match.group("scheme").lower(), {}
        elif scheme is not None:
            quoted = match.group("quoted")
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group("bare")
            params[match.group("key").lower()] = value
    if scheme is not None:
        challenges.append(Challenge(scheme, params))
    return tuple(challenges)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"


def parse_token_response(body: bytes, *, registry: str, now: float) -> tuple[str, float]:
    """(token, expires_at) from a token service answer; garbage becomes a clear error."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if not isinstance(document, dict):
        raise InvalidRegistryResponseError(
            f"the token service of {registry} answered with something that is not a token.",
            registry=registry,
            temporary=True,
        )
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token or len(token) > 64 * 1024:
        raise InvalidRegistryResponseError(
            f"the token service of {registry} answered without a usable token.",
            registry=registry,
            temporary=True,
        )
    expires_in = document.get("expires_in")
    lifetime = (
        float(expires_in)
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
        else DEFAULT_TOKEN_SECONDS
    )
    lifetime = max(lifetime, DEFAULT_TOKEN_SECONDS)  # the spec's minimum
    return token, now + lifetime - _TOKEN_EXPIRY_MARGIN_SECONDS


TokenKey = tuple[str, str, str, str]
"""(realm, service, scope, identity): identity is the username or '' for anonymous."""


class TokenCache:
    """Bearer tokens until they expire; LRU-bounded so a scan over many repos cannot grow it."""

    def __init__(
        self, *, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[TokenKey, tuple[str, float]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def get(self, key: TokenKey) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return token

    def put(self, key: TokenKey, token: str, expires_at: float) -> None:
        self._entries[key] = (token, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: TokenKey) -> None:
        self._entries.pop(key, None)


def _docker_config_lookup(path: str, host: str) -> Credentials | None:
    from docker.errors import DockerException

    from docker import auth as docker_auth

    try:
        auth_config = docker_auth.load_config(config_path=path)
        entry: dict[str, Any] | None = auth_config.resolve_authconfig(host)
    except (DockerException, OSError, ValueError) as error:
        log.warning("cannot read registry credentials from %s: %s", path, type(error).__name__)
        return None
    if not entry:
        return None
    username, password = (
        entry.get("Username") or entry.get("username"),
        entry.get("Password") or entry.get("password"),
    )
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credentials(username, password)
    return None


class CredentialStore:
    """Credentials by registry host (as in normalized names), looked up in a fixed order:
    static ``registries.HOST.username``/``password_file``, then ``dockerconfigjson`` files,
    then the Docker ``config.json``."""

    def __init__(
        self,
        registries: Mapping[str, RegistrySettings],
        credentials: CredentialsSettings,
    ) -> None:
        self._registries = registries
        self._settings = credentials
        self._cache: dict[str, tuple[Credentials | None, float]] = {}
        for path in credentials.dockerconfigjson_files:
            if not Path(path).is_file():
                raise ConfigError(
                    "credentials.dockerconfigjson_files", f"{path!r} is not a readable file"
                )

    def lookup_names(self, host: str) -> tuple[str, ...]:
        """Names a Docker config may use for ``host`` (Docker Hub has its legacy URL)."""
        if host == "docker.io":
            return ("docker.io", "https://index.docker.io/v1/", "index.docker.io")
        return (host,)

    def for_host(self, host: str) -> Credentials | None:
        """Credentials for ``host``; looked up at most once a minute (files are re-read so a
        rotated Secret is picked up without a restart)."""
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and cached[1] > now:
            return cached[0]
        found = self._lookup(host)
        self._cache[host] = (found, now + _CREDENTIAL_CACHE_SECONDS)
        return found

    def _lookup(self, host: str) -> Credentials | None:
        static = self._registries.get(host)
        if static and static.username and static.password_file:
            try:
                password = Path(static.password_file).read_text().strip()
            except OSError as error:
                log.warning("cannot read the password file for %s: %s", host, error.strerror)
            else:
                return Credentials(static.username, password)
        files = [*self._settings.dockerconfigjson_files]
        if self._settings.docker_config:
            files.append(self._settings.docker_config)
        for path in files:
            for name in self.lookup_names(host):
                found = _docker_config_lookup(path, name)
                if found:
                    return found
        return None
