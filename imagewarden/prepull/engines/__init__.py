"""Container engines the node agent pulls through, behind one small async interface.

The agent (:mod:`imagewarden.prepull.agent`) decides *what* to pull (a pool's images resolved
to digests); an :class:`Engine` does the pulling on this node and reports progress:

- :class:`~imagewarden.prepull.engines.docker_engine.DockerEngine`: the Docker Engine API
  (dockerd, or podman's compatible service) through the ``docker`` package; blocking SDK
  calls run in a bounded thread pool, and the pull's JSON stream gives per-blob progress.
- :class:`~imagewarden.prepull.engines.cri.CriEngine`: the Kubernetes CRI ``runtime.v1``
  ImageService (containerd, CRI-O) over gRPC; a CRI pull reports no progress, so the size
  is read from ``ImageStatus`` once the pull is done.

:func:`open_engine` builds either from a kind and a socket address. Every engine method may
raise :class:`~imagewarden.errors.EngineError` (``.temporary`` tells the agent whether a retry
can help); none of them ever removes an image the agent did not ask it to.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DEFAULT_SOCKETS",
    "BlobProgress",
    "Engine",
    "EngineKind",
    "ProgressCallback",
    "PullOutcome",
    "PullTarget",
    "classify_pull_error",
    "foreign_names",
    "open_engine",
]


class EngineKind(enum.Enum):
    """Which API the agent speaks to the node's container engine."""

    DOCKER = "docker"
    """Docker Engine API (dockerd or ``podman system service``)."""
    CRI = "cri"
    """Kubernetes CRI runtime.v1 ImageService (containerd, CRI-O)."""


DEFAULT_SOCKETS: Mapping[EngineKind, str] = {
    EngineKind.DOCKER: "unix:///var/run/docker.sock",
    EngineKind.CRI: "unix:///run/containerd/containerd.sock",
}
"""Where each engine listens on a stock node; ``--engine-socket`` overrides."""


@dataclass(frozen=True)
class PullTarget:
    """One image to pull, pinned to the digest the registry resolved."""

    name: str
    """Repository as normalized (``127.0.0.1:5000/org/app``, ``docker.io/library/ubuntu``)."""
    digest: str
    """Top-level manifest digest (the index digest for multi-platform images)."""
    platform: str = "linux/amd64"
    """Platform whose manifest the engine selects from an index."""
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    """(username, password) for the registry, sent with this pull only; never logged."""
    size_bytes: int | None = None
    """Compressed size of the platform's config plus layers, as the registry's manifest gives
    it (:attr:`imagewarden.registry.Resolution.size_bytes`); ``None`` when unknown."""
    blob_sizes: Mapping[str, int] = field(default_factory=dict)
    """Digest -> compressed size of each config and layer blob, when the manifest was read.

    Optional: lets the progress of each blob end at its exact size even when an engine reports
    a blob complete without ever sending a byte count for it (podman sends counts at most once
    a second, so small blobs only ever say "Download complete")."""
    manifest_bytes: int = 0
    """Bytes of the manifest documents (index plus platform manifest); 0 when unknown.

    containerd's ``ImageStatus.size`` counts them; subtracting gives config plus layers."""

    @property
    def pinned(self) -> str:
        """``name@digest``: what the engine is asked to pull."""
        return f"{self.name}@{self.digest}"

    @property
    def registry_host(self) -> str:
        """Registry host as it appears in the name (``127.0.0.1:5000``, ``docker.io``)."""
        return self.name.split("/", 1)[0]

    @property
    def expected_bytes(self) -> int | None:
        """Compressed config plus layers, when known; else ``None``."""
        return sum(self.blob_sizes.values()) if self.blob_sizes else self.size_bytes


@dataclass
class BlobProgress:
    """What is known about one blob (layer or config) of a pull in flight."""

    done_bytes: int = 0
    """Bytes downloaded so far."""
    total_bytes: int | None = None
    """Compressed size, once the engine or the manifest told it."""
    state: str = "waiting"
    """``waiting``, ``downloading``, ``downloaded``, ``complete`` or ``skipped`` (already on
    the node: nothing downloaded)."""


ProgressCallback = Callable[[int, int | None], None]
"""Called as ``(downloaded_bytes, total_bytes_or_None)`` whenever a pull makes progress.

Engines call it on the event loop thread; it must not block."""


@dataclass(frozen=True)
class PullOutcome:
    """What one finished pull did."""

    downloaded_bytes: int
    """Compressed bytes the engine downloaded (blobs already on the node excluded)."""
    exact: bool = True
    """False when some blob's size could not be told and ``downloaded_bytes`` is a lower bound."""
    skipped_blobs: int = 0
    """Blobs the engine already had (shared layers)."""
    image_id: str = ""
    """The engine's image ID (config digest for both podman and containerd)."""
    engine_size_bytes: int | None = None
    """Size the engine reports for the stored image, when it reports one (CRI)."""


class Engine(Protocol):
    """What the agent needs from a container engine on its node."""

    kind: EngineKind
    """The API spoken."""

    @property
    def address(self) -> str:
        """Where the engine listens (for ``/status`` and error messages)."""
        ...

    async def version(self) -> str:
        """Engine name and version; also proves the engine answers."""
        ...

    async def has_image(self, target: PullTarget) -> bool:
        """True when the engine holds ``target.pinned`` (so no pull is needed)."""
        ...

    async def pull(self, target: PullTarget, on_progress: ProgressCallback) -> PullOutcome:
        """Pull ``target.pinned``; raise :class:`~imagewarden.errors.ImagePullError` on failure."""
        ...

    async def remove(self, target: PullTarget) -> bool:
        """Remove ``target.pinned`` unless the image is known under any other name.

        Only ever called for digests the agent itself pulled; an image that someone else also
        tagged or pulled under another name is left alone (False). True when removed or gone.
        """
        ...

    async def close(self) -> None:
        """Release connections and worker threads; stops pulls still running."""
        ...


# Substrings of engine error messages, lower-cased, by what they mean. Checked in this order.
_NOT_FOUND_MARKERS = (
    "manifest unknown",
    "blob unknown",
    "name unknown",
    "not found",
    "does not exist",
    "status 404",
    "404 not found",
)
_UNAUTHORIZED_MARKERS = (
    "unauthorized",
    "authentication required",
    "denied",
    "incorrect username or password",
    "invalid username/password",
    "status 401",
    "status 403",
)
_TEMPORARY_MARKERS = (
    "connection refused",
    "connection reset",
    "i/o timeout",
    "timeout",
    "timed out",
    "eof",
    "broken pipe",
    "toomanyrequests",
    "too many requests",
    "service unavailable",
    "temporarily",
    "no route to host",
    "network is unreachable",
)


_TEMPORARY_STATUS = re.compile(r"\b(408|429|500|502|503|504)\b")
# Digests, IDs and addresses are noise here (a digest easily contains "404" or "eof").
_NOISE = re.compile(r"[0-9a-f]{12,}|\d+\.\d+\.\d+\.\d+(:\d+)?|\[[0-9a-f:]+\](:\d+)?")


def classify_pull_error(message: str) -> tuple[str, bool]:
    """``(reason, temporary)`` for an engine's pull error message.

    Gone (``not_found``) and refused credentials (``unauthorized``) are permanent: asking
    again gives the same answer. Network-looking failures are temporary, and so is anything
    unrecognised (retries are bounded, and a wrong "permanent" would strand a node).
    """
    text = _NOISE.sub(" ", message.lower())
    if any(marker in text for marker in _UNAUTHORIZED_MARKERS):
        return "unauthorized", False
    if any(marker in text for marker in _NOT_FOUND_MARKERS):
        return "not_found", False
    if any(marker in text for marker in _TEMPORARY_MARKERS) or _TEMPORARY_STATUS.search(text):
        return "network", True
    return "failed", True


def foreign_names(names: Iterable[str], pinned: str) -> list[str]:
    """Names of an image other than the agent's own ``name@digest`` pull.

    Digest references of the same repository are the same pull seen from another level
    (podman lists an index pull under the index and the platform manifest digest); a tag, or
    any reference to another repository, means someone else named the image.
    """
    repository = pinned.partition("@")[0]
    return [
        name
        for name in dict.fromkeys(names)
        if name != pinned and not name.startswith(f"{repository}@")
    ]


def open_engine(
    kind: EngineKind,
    address: str | None = None,
    *,
    max_parallel_pulls: int = 2,
    stall_timeout_seconds: float = 120.0,
    pull_timeout_seconds: float = 3600.0,
) -> Engine:
    """An engine client for ``kind`` at ``address`` (the kind's default socket when None).

    Nothing is contacted here; the first call (usually :meth:`Engine.version`) connects.
    """
    address = address or DEFAULT_SOCKETS[kind]
    if address.startswith("/"):
        address = f"unix://{address}"
    if kind is EngineKind.DOCKER:
        from imagewarden.prepull.engines.docker_engine import DockerEngine

        return DockerEngine(
            address,
            max_parallel_pulls=max_parallel_pulls,
            stall_timeout_seconds=stall_timeout_seconds,
            pull_timeout_seconds=pull_timeout_seconds,
        )
    from imagewarden.prepull.engines.cri import CriEngine

    return CriEngine(address, pull_timeout_seconds=pull_timeout_seconds)
