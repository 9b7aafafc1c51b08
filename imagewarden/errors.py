"""Every exception imagewarden raises, in one family under :class:`ImagewardenError`.

Other modules import their errors from here so that callers can catch by meaning
(``RegistryError.temporary``, ``ConfigError.key_path``) without importing backends.
"""

from __future__ import annotations


class ImagewardenError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidReference(ImagewardenError, ValueError):
    """An image reference string that breaks the docker/distribution grammar.

    The message names the broken rule as specifically as possible and, where people
    commonly paste something else into a form field, how to fix it.
    """


class ConfigError(ImagewardenError, ValueError):
    """A configuration file or value that cannot be used; the message names the key path."""

    def __init__(self, key_path: str, message: str) -> None:
        self.key_path = key_path
        super().__init__(f"{key_path}: {message}" if key_path else message)


class PolicyPatternError(ImagewardenError, ValueError):
    """An allow/deny pattern that is not a valid image-name glob."""


class RegistryError(ImagewardenError):
    """A registry (or its token service) did not give a usable answer.

    ``status`` is the HTTP status (None when no response arrived), ``codes`` the registry error
    codes from the body (``MANIFEST_UNKNOWN``, ``TOOMANYREQUESTS`` …), ``temporary`` whether
    asking again later may succeed, and ``registry`` the host as it appears in image names.
    The message is written for the person who typed the image and never contains credentials.
    """

    temporary_statuses = frozenset({408, 429, 500, 502, 503, 504})
    temporary_codes = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        status: int | None = None,
        codes: tuple[str, ...] = (),
        temporary: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.registry = registry
        self.status = status
        self.codes = codes
        if temporary is None:
            temporary = status in self.temporary_statuses or bool(
                self.temporary_codes.intersection(codes)
            )
        self.temporary = temporary


class RepositoryNotFoundError(RegistryError):
    """The repository does not exist, or is private and we may not read it."""


class TagNotFoundError(RegistryError):
    """The repository is readable but has no such tag (or digest)."""

    def __init__(
        self, message: str, *, suggestions: tuple[str, ...] = (), **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.suggestions = suggestions


class CredentialsRefusedError(RegistryError):
    """The registry or its token service refused the credentials we hold."""


class RateLimitedError(RegistryError):
    """429 Too Many Requests, still in force when the time budget ran out."""


class RegistryUnreachableError(RegistryError):
    """No HTTP answer: connection refused or reset, DNS or TLS failure, or time-out."""


class UnsupportedManifestError(RegistryError):
    """A manifest type nodes cannot pull (Docker schema 1) or that we do not know."""


class PlatformNotFoundError(RegistryError):
    """The image exists but not for the platform the profile's nodes run."""

    def __init__(self, message: str, *, platforms: tuple[str, ...] = (), **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.platforms = platforms


class InvalidRegistryResponseError(RegistryError):
    """The registry answered, but with something unusable: bad JSON, a digest that does not
    match the body, a manifest over the size cap, a redirect loop, a garbage token."""


class EngineError(ImagewardenError):
    """A container engine (Docker Engine API or CRI) failed an operation of the node agent.

    ``engine`` names the engine kind (``docker``, ``cri``), ``reason`` classifies the failure
    for ``/status`` and logs (``not_found``, ``unauthorized``, ``stalled``, ``timeout``,
    ``unavailable``, ``failed``), and ``temporary`` says whether the agent should try again.
    """

    def __init__(
        self, message: str, *, engine: str = "", reason: str = "failed", temporary: bool = False
    ) -> None:
        super().__init__(message)
        self.engine = engine
        self.reason = reason
        self.temporary = temporary


class EngineUnavailableError(EngineError):
    """The engine's socket is missing or does not answer (dockerd/podman/containerd down)."""

    def __init__(self, message: str, *, engine: str = "") -> None:
        super().__init__(message, engine=engine, reason="unavailable", temporary=True)


class ImagePullError(EngineError):
    """The engine could not pull an image: gone upstream, refused credentials, stalled, …"""


class CheckServiceError(ImagewardenError):
    """The hub could not get a usable verdict from the checker service (``imagewarden serve``):
    unreachable, too slow, token refused, or an answer that is not a verdict. The hub's
    ``failure_mode`` decides what the spawn does; the message completes "the checker … could
    not be asked: …"."""


class WatchGoneError(ImagewardenError):
    """A Kubernetes watch's resourceVersion is too old (410 Gone): the collection must be listed
    again (``imagewarden.prepull.controller.continuous_watch`` does so)."""


class LeaseLostError(ImagewardenError):
    """The pre-pull controller no longer holds its Lease (another replica took it, or renewing
    failed for too long), so it must stop writing at once."""
