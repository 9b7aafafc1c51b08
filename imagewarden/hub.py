"""KubeSpawner integration: check the images users type into the spawn form before a pod exists.

Installed into the hub image with ``pip install imagewarden`` and switched on in
``jupyterhub_config.py`` (Zero to JupyterHub: ``hub.extraConfig``)::

    from imagewarden.hub import configure
    configure(c, url="http://imagewarden:8080", token_file="/etc/imagewarden/token")

or, checking in the hub process itself (no service)::

    configure(c, config_file="/etc/imagewarden/config.yaml")

What happens on every spawn, from the form or through the REST API (``user_options`` as JSON):

1. ``pre_spawn_hook`` (JupyterHub runs it before ``Spawner.start``) finds every value typed into
   an ``unlisted_choice`` ("Other") whose ``kubespawner_override`` puts ``{value}`` into ``image``
   (``user_options["{option}--unlisted-choice"]``, the profile from ``user_options["profile"]``
   or KubeSpawner's default profile). KubeSpawner applies the overrides only later, inside
   ``start()``, so ``spawner.image`` is still the default here: the image is worked out from
   ``user_options`` exactly as KubeSpawner will, using KubeSpawner's own profile lookup.
2. Each image is checked with the profile's policy and platform, in-process (a
   :class:`~imagewarden.checker.Checker` with its own registry client, made once per process)
   or by ``POST /api/v1/check`` to the service (:mod:`imagewarden.service`). A refusal raises
   ``tornado.web.HTTPError(400)`` with a sentence naming the image and the reason: JupyterHub
   waits about one second on the spawn POST and re-renders the form with that message. When the
   service cannot be asked, ``failure_mode`` decides (refuse by default, HTTP 503) and the
   message says so.
3. ``modify_pod_hook`` (KubeSpawner runs it after building the pod, before submitting it)
   replaces the checked image in the pod's containers with the verdict's ``name@digest``, so the
   node pulls exactly what was checked, never a tag that moved in between.

Hooks the admin configured before :func:`configure` keep working: ours call them (sync or async).
Our ``pre_spawn_hook`` runs before theirs (a refused spawn has no side effects); their
``modify_pod_hook`` runs before ours (the pin applies to the pod they shaped).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from tornado.web import HTTPError
from yarl import URL

from imagewarden.checker import MAX_IMAGE_CHARS, Checker, Verdict
from imagewarden.config import DEFAULT_SETTINGS, FailureMode, Settings, load_config
from imagewarden.errors import CheckServiceError, ConfigError
from imagewarden.metrics import Metrics
from imagewarden.reference import InvalidReference, parse
from imagewarden.registry import RegistryClient
from imagewarden.service import TOKEN_ENV

log = logging.getLogger(__name__)

UNLISTED_SUFFIX = "--unlisted-choice"
"""Suffix of the ``user_options`` key holding an option's free-text ("Other") value."""
DEFAULT_TIMEOUT_SECONDS = 6.0
"""Bound on one check over HTTP: the service's own budget (5 s by default) plus a margin."""
MAX_RESPONSE_BYTES = 64 * 1024
MAX_SHOWN_CHARS = 160
"""Typed values are cut to this length in messages (someone may paste a whole file)."""
REFUSED_STATUS = 400
UNAVAILABLE_STATUS = 503
_GUARD_ATTRIBUTE = "_imagewarden_guard"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Hook = Callable[..., Any]


class _KeepMissing(dict[str, object]):
    """``str.format_map`` mapping that leaves unknown ``{fields}`` as they are (as KubeSpawner)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _format_template(template: str, value: object, option: str) -> str:
    """``template`` with ``{value}`` filled in, as KubeSpawner's ``recursive_format`` does it."""
    try:
        return template.format_map(_KeepMissing(value=value))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ValueError(
            f"The value given for {option!r} cannot be put into the image name."
        ) from None


@dataclass(frozen=True)
class TypedImage:
    """An image that a user's typed value puts into the pod."""

    profile: str | None
    """Slug of the profile whose overrides apply (KubeSpawner's default when none was sent)."""
    option: str
    """The profile option (e.g. ``image``) whose "Other" box held the value."""
    typed: object
    """The value as the user sent it (a string from the form; anything from the REST API)."""
    image: str
    """What KubeSpawner will set ``spawner.image`` to: the override with ``{value}`` filled in."""


def shown(value: object) -> str:
    """A typed value made safe and short enough to quote in a message or a log line."""
    text = value if isinstance(value, str) else repr(value)
    text = _CONTROL_CHARACTERS.sub("\N{REPLACEMENT CHARACTER}", text)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


async def _profile_list(spawner: Any) -> list[dict[str, Any]]:
    """The spawner's profile_list as KubeSpawner initializes it (slugs and defaults filled in)."""
    profiles = spawner.profile_list
    if isinstance(profiles, Mapping):
        profiles = [profiles[key] for key in sorted(profiles)]
    elif callable(profiles):
        profiles = profiles(spawner)
        if inspect.isawaitable(profiles):
            profiles = await profiles
    if not profiles:
        return []
    initialized: list[dict[str, Any]] = spawner._get_initialized_profile_list(list(profiles))
    return initialized


async def typed_images(spawner: Any) -> list[TypedImage]:
    """Every image that a value typed into an "Other" box puts into this spawn's pod.

    Raises :class:`ValueError` (KubeSpawner's own message) when ``user_options`` names a profile
    that does not exist: KubeSpawner would refuse the spawn for the same reason.
    """
    options = spawner.user_options
    if not isinstance(options, Mapping) or not options:
        return []
    profiles = await _profile_list(spawner)
    if not profiles:
        return []
    # KubeSpawner's own lookup: the same profile the spawn will use, the default when none sent.
    profile: dict[str, Any] = spawner._get_profile(options.get("profile"), profiles)
    slug = profile.get("slug")
    found: list[TypedImage] = []
    for option_name, option in (profile.get("profile_options") or {}).items():
        typed = options.get(f"{option_name}{UNLISTED_SUFFIX}")
        unlisted = option.get("unlisted_choice") or {}
        if not typed or not unlisted.get("enabled"):
            continue  # KubeSpawner ignores it or refuses the spawn itself
        template = (unlisted.get("kubespawner_override") or {}).get("image")
        if not isinstance(template, str) or "{value" not in template:
            continue
        _validate(typed, unlisted, str(option.get("display_name") or option_name))
        found.append(
            TypedImage(
                profile=slug if isinstance(slug, str) else None,
                option=str(option_name),
                typed=typed,
                image=_format_template(template, typed, str(option_name)),
            )
        )
    return found


def _validate(typed: object, unlisted: Mapping[str, Any], label: str) -> None:
    """KubeSpawner's own ``validation_regex`` test (``re.match``), refused with its
    ``validation_message`` here instead of as an unhandled error inside ``start()``."""
    pattern = unlisted.get("validation_regex")
    if not pattern:
        return
    if isinstance(typed, str) and re.match(pattern, typed):
        return
    hint = unlisted.get("validation_message")
    raise ValueError(
        f"“{shown(typed)}” is not accepted in the field {label!r}"
        + (f": {shown(hint)}" if hint else ".")
    )


class CheckBackend(Protocol):
    """Where verdicts come from: the checker in this process, or the service over HTTP."""

    async def check(self, image: str, *, profile: str | None) -> Verdict: ...

    async def aclose(self) -> None: ...

    @property
    def description(self) -> str: ...


class InProcessBackend:
    """A :class:`Checker` with its own registry client, made on first use in the hub's loop."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._client: RegistryClient | None = None
        self._checker: Checker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def description(self) -> str:
        return "the image checker in the hub"

    async def _ready_checker(self) -> Checker:
        loop = asyncio.get_running_loop()
        if self._checker is not None and self._loop is loop:
            return self._checker
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
            self._checker = None
        async with self._lock:
            if self._checker is None:
                client = RegistryClient(self.settings, metrics=self.metrics)
                await client.__aenter__()
                self._client = client
                self._checker = Checker(self.settings, client, metrics=self.metrics)
            return self._checker

    async def check(self, image: str, *, profile: str | None) -> Verdict:
        checker = await self._ready_checker()
        return await checker.check(image, profile=profile)

    async def aclose(self) -> None:
        client, self._client, self._checker = self._client, None, None
        if client is not None:
            await client.close()


def _optional_str(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise CheckServiceError(f"the service answered a non-string {key!r}")
    return value


def verdict_from_json(document: object, image: str) -> Verdict:
    """A :class:`Verdict` from the service's JSON, refusing answers that cannot be trusted."""
    if not isinstance(document, dict):
        raise CheckServiceError("the service answered something other than a JSON object")
    allowed, reason = document.get("allowed"), document.get("reason")
    if not isinstance(allowed, bool) or not isinstance(reason, str):
        raise CheckServiceError("the service's answer lacks 'allowed' or 'reason'")
    pinned = _optional_str(document, "pinned")
    if pinned is not None:
        try:
            if parse(pinned).digest is None:
                raise InvalidReference("no digest")
        except InvalidReference:
            raise CheckServiceError(
                f"the service answered a pinned image without a digest: {shown(pinned)}"
            ) from None
    platforms = document.get("platforms") or []
    size_bytes = document.get("size_bytes")
    return Verdict(
        allowed=allowed,
        image=image,
        reason=reason,
        code=_optional_str(document, "code") or "ok",
        reference=_optional_str(document, "reference"),
        digest=_optional_str(document, "digest"),
        pinned=pinned,
        platforms=tuple(str(item) for item in platforms) if isinstance(platforms, list) else (),
        size_bytes=size_bytes if isinstance(size_bytes, int) else None,
        rule=_optional_str(document, "rule"),
        profile=_optional_str(document, "profile"),
        platform=_optional_str(document, "platform"),
        stale=document.get("stale") is True,
    )


class HttpBackend:
    """Asks ``imagewarden serve`` (``POST {url}/api/v1/check``) with a bearer token."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        base = URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError("url", f"{url!r} must be an http:// or https:// URL with a host")
        self.url = base.with_path(base.path.rstrip("/") + "/api/v1/check")
        self.timeout_seconds = timeout_seconds
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Longer images are refused before parsing; deciding them here gives the same verdict
        # without sending a body the service would reject as too large.
        self._offline = Checker(DEFAULT_SETTINGS)

    @property
    def description(self) -> str:
        return f"the image checker at {self.url.origin()}"

    def _ready_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
                trust_env=False,
            )
            self._loop = loop
        return self._session

    async def check(self, image: str, *, profile: str | None) -> Verdict:
        if len(image) > MAX_IMAGE_CHARS:
            return await self._offline.check(image, profile=profile)
        session = self._ready_session()
        try:
            async with session.post(
                self.url, json={"image": image, "profile": profile}, allow_redirects=False
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BYTES + 1)
                status = response.status
        except TimeoutError:
            raise CheckServiceError(
                f"it did not answer within {self.timeout_seconds:g} seconds"
            ) from None
        except aiohttp.ClientError as error:
            raise CheckServiceError(f"it could not be reached ({type(error).__name__})") from None
        if status == 401:
            raise CheckServiceError("it refused the hub's token (HTTP 401)")
        if status != 200:
            raise CheckServiceError(f"it answered HTTP {status}")
        if len(body) > MAX_RESPONSE_BYTES:
            raise CheckServiceError("its answer was too large")
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckServiceError("its answer was not JSON") from None
        return verdict_from_json(document, image)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


async def _call(hook: Hook, *args: Any) -> Any:
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _pod_containers(pod: Any) -> list[Any]:
    """Containers and init containers of a pod given as a kubernetes model or a dict."""
    spec = pod.get("spec") if isinstance(pod, Mapping) else getattr(pod, "spec", None)
    if spec is None:
        return []
    found: list[Any] = []
    for key, attribute in (("containers", "containers"), ("initContainers", "init_containers")):
        items = spec.get(key) if isinstance(spec, Mapping) else getattr(spec, attribute, None)
        found.extend(items or [])
    return found


def _container_image(container: Any) -> Any:
    if isinstance(container, Mapping):
        return container.get("image")
    return getattr(container, "image", None)


def _set_container_image(container: Any, image: str) -> None:
    if isinstance(container, dict):
        container["image"] = image
    else:
        container.image = image


class ImageGuard:
    """The hooks :func:`configure` installs; one per hub process."""

    def __init__(
        self, backend: CheckBackend, *, failure_mode: FailureMode = FailureMode.REFUSE
    ) -> None:
        self.backend = backend
        self.failure_mode = failure_mode
        self._verdicts: weakref.WeakKeyDictionary[Any, dict[str, Verdict]] = (
            weakref.WeakKeyDictionary()
        )
        self._previous_pre_spawn: Hook | None = None
        self._previous_modify_pod: Hook | None = None

    async def check(self, typed: TypedImage) -> Verdict:
        """The verdict for one typed image; raises HTTPError when it must not be started."""
        try:
            verdict = await self.backend.check(typed.image, profile=typed.profile)
        except CheckServiceError as error:
            if self.failure_mode is FailureMode.ALLOW:
                log.warning(
                    "imagewarden: %s could not check %s (%s); allowed unchecked by failure_mode",
                    self.backend.description,
                    shown(typed.image),
                    error,
                )
                return Verdict(
                    allowed=True,
                    image=typed.image,
                    reason=f"{shown(typed.image)} was not checked: {error}.",
                    code="failure_mode_allow",
                    profile=typed.profile,
                )
            raise self._refusal(
                UNAVAILABLE_STATUS,
                typed,
                f"{self.backend.description} could not be asked: {error}. The image was "
                "not checked, so the server was not started; try again in a minute or pick "
                "one of the listed images.",
            ) from None
        if not verdict.allowed:
            log.info(
                "imagewarden: refused %s for profile %s (%s)",
                shown(typed.image),
                typed.profile,
                verdict.code,
            )
            raise self._refusal(REFUSED_STATUS, typed, verdict.reason)
        log.info(
            "imagewarden: %s allowed for profile %s as %s",
            shown(typed.image),
            typed.profile,
            verdict.pinned or "unpinned",
        )
        return verdict

    @staticmethod
    def _refusal(status: int, typed: TypedImage, reason: str) -> HTTPError:
        message = f"Cannot start a server with the image “{shown(typed.typed)}”: {reason}"
        error = HTTPError(status, "%s", message)
        # JupyterHub shows this on the re-rendered spawn form instead of "HTTP 400: …".
        error.jupyterhub_message = message  # type: ignore[attr-defined]
        return error

    async def _check_spawn(self, spawner: Any) -> dict[str, Verdict]:
        try:
            found = await typed_images(spawner)
        except ValueError as error:
            message = f"Cannot start a server: {shown(str(error))}"
            failure = HTTPError(REFUSED_STATUS, "%s", message)
            failure.jupyterhub_message = message  # type: ignore[attr-defined]
            raise failure from None
        verdicts: dict[str, Verdict] = {}
        for typed in found:
            verdicts[typed.image] = await self.check(typed)
        return verdicts

    async def pre_spawn_hook(self, spawner: Any) -> None:
        """Check every typed image; raise HTTPError(400) for the first refused one."""
        self._verdicts.pop(spawner, None)
        self._verdicts[spawner] = await self._check_spawn(spawner)
        if self._previous_pre_spawn is not None:
            await _call(self._previous_pre_spawn, spawner)

    async def modify_pod_hook(self, spawner: Any, pod: Any) -> Any:
        """Pin every container that runs a checked image to the digest that was checked."""
        if self._previous_modify_pod is not None:
            pod = await _call(self._previous_modify_pod, spawner, pod)
        verdicts = self._verdicts.pop(spawner, None)
        if verdicts is None:
            # pre_spawn_hook did not run for this spawn (replaced by a later config line):
            # check here, so a typed image is never started unchecked.
            verdicts = await self._check_spawn(spawner)
        for container in _pod_containers(pod):
            verdict = verdicts.get(_container_image(container))
            if verdict is not None and verdict.pinned:
                _set_container_image(container, verdict.pinned)
        return pod

    def install(self, c: Any, *, section: str = "KubeSpawner") -> None:
        """Set ``c.<section>.pre_spawn_hook`` and ``modify_pod_hook``, keeping existing ones."""
        self._previous_pre_spawn = _unwrap(_configured(c, section, "pre_spawn_hook"))
        self._previous_modify_pod = _unwrap(_configured(c, section, "modify_pod_hook"))

        # Plain functions, not bound methods: traitlets deep-copies config values into every
        # spawner, which copies a bound method's instance (one checker and cache per spawn)
        # but leaves functions alone.
        async def pre_spawn_hook(spawner: Any) -> None:
            await self.pre_spawn_hook(spawner)

        async def modify_pod_hook(spawner: Any, pod: Any) -> Any:
            return await self.modify_pod_hook(spawner, pod)

        for hook in (pre_spawn_hook, modify_pod_hook):
            setattr(hook, _GUARD_ATTRIBUTE, self)
            c[section][hook.__name__] = hook

    async def aclose(self) -> None:
        await self.backend.aclose()


def _configured(c: Any, section: str, name: str) -> Hook | None:
    """The hook set for ``section`` or inherited from ``Spawner``, without creating entries."""
    for candidate in (section, "Spawner"):
        if candidate in c and name in c[candidate]:
            value = c[candidate][name]
            if callable(value):
                hook: Hook = value
                return hook
    return None


def _unwrap(hook: Hook | None) -> Hook | None:
    """An earlier configure()'s hook is replaced, not wrapped: no double checks."""
    guard = getattr(hook, _GUARD_ATTRIBUTE, None)
    if isinstance(guard, ImageGuard):
        name = getattr(hook, "__name__", "")
        return guard._previous_pre_spawn if name == "pre_spawn_hook" else guard._previous_modify_pod
    return hook


def _read_token(token: str | None, token_file: str | os.PathLike[str] | None) -> str | None:
    if token:
        return token
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError as error:
            raise ConfigError("token_file", f"cannot read {str(token_file)!r}: {error}") from None
        if not text:
            raise ConfigError("token_file", f"{str(token_file)!r} is empty")
        return text
    return os.environ.get(TOKEN_ENV) or None


def configure(
    c: Any,
    *,
    url: str | None = None,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    failure_mode: FailureMode | str = FailureMode.REFUSE,
    metrics: Metrics | None = None,
    section: str = "KubeSpawner",
) -> ImageGuard:
    """Install the image checks on ``c.KubeSpawner`` (the ``c`` of ``jupyterhub_config.py``).

    With ``url``: ask the service there, with ``token`` / ``token_file`` / env
    ``IMAGEWARDEN_TOKEN`` as bearer token and at most ``timeout_seconds`` per check. Without it:
    check in the hub process with ``config_file`` (or ``settings``; neither: the built-in
    defaults). ``failure_mode`` (``refuse`` or ``allow``) applies when the service cannot be
    asked; registry failures follow the checker's own ``checker.failure_mode``.
    Config mistakes raise :class:`~imagewarden.errors.ConfigError` when the hub starts.
    """
    mode = failure_mode if isinstance(failure_mode, FailureMode) else None
    if mode is None:
        choices = {member.value: member for member in FailureMode}
        if failure_mode not in choices:
            raise ConfigError("failure_mode", f"{failure_mode!r} is not one of: refuse, allow")
        mode = choices[str(failure_mode)]
    if timeout_seconds <= 0:
        raise ConfigError("timeout_seconds", "must be more than 0")
    backend: CheckBackend
    if url is not None:
        if config_file is not None or settings is not None:
            raise ConfigError("url", "give either url (the service) or config_file, not both")
        backend = HttpBackend(
            url, token=_read_token(token, token_file), timeout_seconds=timeout_seconds
        )
    else:
        if settings is None:
            settings = load_config(config_file) if config_file is not None else DEFAULT_SETTINGS
        backend = InProcessBackend(settings, metrics=metrics)
    guard = ImageGuard(backend, failure_mode=mode)
    guard.install(c, section=section)
    log.info("imagewarden: checking typed images with %s", backend.description)
    return guard


__all__ = [
    "CheckBackend",
    "HttpBackend",
    "ImageGuard",
    "InProcessBackend",
    "TypedImage",
    "configure",
    "typed_images",
    "verdict_from_json",
]
