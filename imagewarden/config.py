"""One YAML file → typed settings; every error names the key path and the bad value.

With no file, :data:`DEFAULT_SETTINGS` allow ``docker.io`` and ``quay.io`` and refuse everything
else. Unknown keys are errors, never silently ignored: a misspelt ``dney:`` must not quietly turn
a deny list off. The ``prepull:`` section is parsed by :mod:`imagewarden.prepull.pools`.
The checker, service, hub and controller read the :class:`Settings` built here.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from yarl import URL

from imagewarden import _values as values
from imagewarden.errors import ConfigError, PolicyPatternError
from imagewarden.policy import PolicyMode, PolicySet, ProfilePolicy

if TYPE_CHECKING:
    from imagewarden.prepull.pools import PrepullConfig

MAX_CONFIG_BYTES = 1024 * 1024
_PLATFORM_PARTS = 2
_EnumT = TypeVar("_EnumT", bound=enum.Enum)


class FailureMode(enum.Enum):
    """What a check answers when the registry cannot be reached and nothing is cached."""

    REFUSE = "refuse"
    """Refuse the image (the default: a spawn that cannot be checked is not started)."""
    ALLOW = "allow"
    """Let the spawn go ahead with the unpinned reference the user typed."""


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach one registry host as it appears in normalized names."""

    endpoint: str | None = None
    """Base URL (mirror, pull-through cache, air-gapped copy). None: the host's usual endpoint
    (``docker.io`` → ``https://registry-1.docker.io``, others ``https://HOST``). Plain HTTP only
    when written out as ``http://``."""
    username: str | None = None
    """Static credentials for this host; the password is read from ``password_file``."""
    password_file: str | None = None
    """File holding the password or token (a mounted Secret), read when credentials are needed."""


@dataclass(frozen=True)
class CredentialsSettings:
    """Where pull credentials come from besides per-registry static ones."""

    docker_config: str | None = None
    """A Docker ``config.json`` (``auths`` and credential helpers are honoured)."""
    dockerconfigjson_files: tuple[str, ...] = ()
    """Kubernetes ``kubernetes.io/dockerconfigjson`` Secrets mounted as files."""


@dataclass(frozen=True)
class ProfileSettings:
    """What a KubeSpawner profile (by slug) changes for its checks."""

    platform: str = "linux/amd64"
    """The ``os/arch[/variant]`` the profile's nodes run: a multi-arch image must offer it."""
    policy: ProfilePolicy = field(default_factory=ProfilePolicy)
    """Extra (``extend``) or replacing (``replace``) allow/deny rules."""


@dataclass(frozen=True)
class CheckerSettings:
    """Time budget, caching and failure behaviour of a check."""

    timeout_seconds: float = 5.0
    """Upper bound for one whole check, registry round trips included. Well above a warm check
    (milliseconds) and below KubeSpawner's start timeout, so an unreachable registry is reported
    instead of hanging the spawn."""
    failure_mode: FailureMode = FailureMode.REFUSE
    """Answer when the registry fails and no recent answer is cached."""
    tag_ttl_seconds: float = 60.0
    """How long a tag → digest answer is reused. Short: tags move."""
    miss_ttl_seconds: float = 10.0
    """How long "no such tag/repository" is reused; shorter, so a fresh push is seen soon."""
    stale_if_error_seconds: float = 3600.0
    """How old a cached answer may be to be served when the registry fails."""
    cache_entries: int = 10000
    """Bound on cached entries of each kind (LRU)."""


@dataclass(frozen=True)
class ServiceSettings:
    """The checker service (``imagewarden serve``)."""

    host: str = "127.0.0.1"
    """Listen address. Loopback by default; the Helm chart sets 0.0.0.0."""
    port: int = 8080
    token_file: str | None = None
    """File holding the bearer token required on /api/v1/check (else env IMAGEWARDEN_TOKEN;
    neither: no token required)."""
    max_body_bytes: int = 16 * 1024
    """Request bodies above this are refused with 413 (an image reference is at most 255+ chars)."""
    max_concurrent_checks: int = 256
    """Checks in flight at once; more wait. Bounds registry work and memory under a spawn storm."""


def _default_prepull() -> PrepullConfig:
    from imagewarden.prepull.pools import PrepullConfig

    return PrepullConfig()


@dataclass(frozen=True)
class Settings:
    """Everything one config file says."""

    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)
    credentials: CredentialsSettings = field(default_factory=CredentialsSettings)
    allow: tuple[str, ...] = ("docker.io/**", "quay.io/**")
    deny: tuple[str, ...] = ()
    profiles: Mapping[str, ProfileSettings] = field(default_factory=dict)
    checker: CheckerSettings = field(default_factory=CheckerSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    prepull: PrepullConfig = field(default_factory=_default_prepull)
    policy: PolicySet = field(init=False, compare=False, repr=False)
    """The compiled allow/deny rules, global and per profile."""

    def __post_init__(self) -> None:
        profiles = {name: profile.policy for name, profile in self.profiles.items()}
        object.__setattr__(self, "policy", PolicySet.build(self.allow, self.deny, profiles))

    def platform_for(self, profile: str | None) -> str:
        settings = self.profiles.get(profile) if profile else None
        return settings.platform if settings else "linux/amd64"


DEFAULT_SETTINGS = Settings()


# --- strict readers: each one names the key path of what it rejects -------------------------


def _section(data: object, key_path: str) -> Mapping[str, Any]:
    """A mapping; an absent or empty section (``checker:`` with no value) is an empty one."""
    return {} if data is None else values.mapping(data, key_path)


def _check_keys(data: Mapping[str, Any], key_path: str, known: set[str]) -> None:
    values.known_keys(data, key_path, sorted(known))


def _string(data: object, key_path: str, *, max_chars: int = 4096) -> str:
    text = values.string(data, key_path, max_chars=max_chars)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ConfigError(key_path, f"{values.shown(text)} contains a control character")
    return text


def _optional_string(data: object, key_path: str) -> str | None:
    return None if data is None else _string(data, key_path)


def _string_list(data: object, key_path: str, *, max_items: int = 10000) -> tuple[str, ...]:
    if data is None:
        return ()
    items = values.sequence(data, key_path, max_items=max_items)
    return tuple(_string(item, f"{key_path}[{index}]") for index, item in enumerate(items))


def _number(data: object, key_path: str, *, minimum: float, maximum: float) -> float:
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise ConfigError(key_path, f"must be a number, got {values.got(data)}")
    if not minimum <= data <= maximum:
        raise ConfigError(key_path, f"{data} is out of range; use {minimum} to {maximum}")
    return float(data)


def _integer(data: object, key_path: str, *, minimum: int, maximum: int) -> int:
    if isinstance(data, bool) or not isinstance(data, int):
        raise ConfigError(key_path, f"must be a whole number, got {values.got(data)}")
    if not minimum <= data <= maximum:
        raise ConfigError(key_path, f"{data} is out of range; use {minimum} to {maximum}")
    return data


def _enum(data: object, key_path: str, enum_type: type[_EnumT]) -> _EnumT:
    choices = [member.value for member in enum_type]
    if not isinstance(data, str) or data not in choices:
        raise ConfigError(key_path, f"{values.shown(data)} is not one of: {', '.join(choices)}")
    return enum_type(data)


def _endpoint(data: object, key_path: str) -> str:
    text = _string(data, key_path, max_chars=2048)
    try:
        url = URL(text)
    except ValueError as error:
        raise ConfigError(key_path, f"{values.shown(text)} is not a URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            key_path, f"{values.shown(text)} must be an http:// or https:// URL with a host"
        )
    if url.user or url.password:
        raise ConfigError(
            key_path,
            "credentials do not belong in the endpoint URL; use username and password_file",
        )
    if url.query_string or url.fragment:
        raise ConfigError(key_path, f"{values.shown(text)} must not have a query or fragment")
    return str(url).rstrip("/")


def _platform(data: object, key_path: str) -> str:
    text = _string(data, key_path, max_chars=64)
    parts = text.split("/")
    if (
        len(parts) < _PLATFORM_PARTS
        or len(parts) > _PLATFORM_PARTS + 1
        or not all(part.isascii() and part.isalnum() for part in parts)
    ):
        raise ConfigError(
            key_path,
            f"{values.shown(text)} is not a platform; write os/arch[/variant], e.g. linux/amd64",
        )
    return text


def _rules(data: object, key_path: str) -> tuple[str, ...]:
    from imagewarden.policy import compile_rule

    rules = _string_list(data, key_path)
    for index, rule in enumerate(rules):
        try:
            compile_rule(rule)
        except PolicyPatternError as error:
            raise ConfigError(
                f"{key_path}[{index}]", f"{values.shown(rule)} is not a valid pattern: {error}"
            ) from None
    return rules


def _registry(data: object, key_path: str) -> RegistrySettings:
    section = _section(data, key_path)
    _check_keys(section, key_path, {"endpoint", "username", "password_file"})
    username = _optional_string(section.get("username"), f"{key_path}.username")
    password_file = _optional_string(section.get("password_file"), f"{key_path}.password_file")
    if (username is None) != (password_file is None):
        raise ConfigError(key_path, "username and password_file go together; give both or neither")
    endpoint = section.get("endpoint")
    return RegistrySettings(
        endpoint=None if endpoint is None else _endpoint(endpoint, f"{key_path}.endpoint"),
        username=username,
        password_file=password_file,
    )


def _registry_host(host: str, key_path: str) -> str:
    from imagewarden.policy import compile_rule

    try:
        if "/" in host:  # "quay.io/org" would otherwise compile as the rule quay.io/org/x
            raise PolicyPatternError(host)
        rule = compile_rule(f"{host}/x")
    except PolicyPatternError:
        raise ConfigError(
            key_path,
            f"{values.shown(host)} is not a registry host such as quay.io or 127.0.0.1:5000",
        ) from None
    return rule.host


def _profile(data: object, key_path: str) -> ProfileSettings:
    section = _section(data, key_path)
    _check_keys(section, key_path, {"platform", "policy"})
    policy = _section(section.get("policy"), f"{key_path}.policy")
    _check_keys(policy, f"{key_path}.policy", {"allow", "deny", "mode"})
    mode = policy.get("mode")
    return ProfileSettings(
        platform=_platform(section.get("platform", "linux/amd64"), f"{key_path}.platform"),
        policy=ProfilePolicy(
            allow=_rules(policy.get("allow"), f"{key_path}.policy.allow"),
            deny=_rules(policy.get("deny"), f"{key_path}.policy.deny"),
            mode=PolicyMode.EXTEND
            if mode is None
            else _enum(mode, f"{key_path}.policy.mode", PolicyMode),
        ),
    )


def _checker(data: object, key_path: str) -> CheckerSettings:
    section = _section(data, key_path)
    defaults = CheckerSettings()
    _check_keys(section, key_path, set(CheckerSettings.__dataclass_fields__))

    def seconds(key: str, default: float, maximum: float) -> float:
        value = section.get(key, default)
        return _number(value, f"{key_path}.{key}", minimum=0.0, maximum=maximum)

    timeout = seconds("timeout_seconds", defaults.timeout_seconds, 300.0)
    if timeout <= 0:
        raise ConfigError(f"{key_path}.timeout_seconds", "must be more than 0")
    return CheckerSettings(
        timeout_seconds=timeout,
        failure_mode=_enum(
            section.get("failure_mode", defaults.failure_mode.value),
            f"{key_path}.failure_mode",
            FailureMode,
        ),
        tag_ttl_seconds=seconds("tag_ttl_seconds", defaults.tag_ttl_seconds, 86400.0),
        miss_ttl_seconds=seconds("miss_ttl_seconds", defaults.miss_ttl_seconds, 86400.0),
        stale_if_error_seconds=seconds(
            "stale_if_error_seconds", defaults.stale_if_error_seconds, 7 * 86400.0
        ),
        cache_entries=_integer(
            section.get("cache_entries", defaults.cache_entries),
            f"{key_path}.cache_entries",
            minimum=1,
            maximum=10_000_000,
        ),
    )


def _service(data: object, key_path: str) -> ServiceSettings:
    section = _section(data, key_path)
    defaults = ServiceSettings()
    _check_keys(section, key_path, set(ServiceSettings.__dataclass_fields__))
    return ServiceSettings(
        host=_string(section.get("host", defaults.host), f"{key_path}.host", max_chars=255),
        port=_integer(
            section.get("port", defaults.port), f"{key_path}.port", minimum=0, maximum=65535
        ),
        token_file=_optional_string(section.get("token_file"), f"{key_path}.token_file"),
        max_body_bytes=_integer(
            section.get("max_body_bytes", defaults.max_body_bytes),
            f"{key_path}.max_body_bytes",
            minimum=256,
            maximum=1024 * 1024,
        ),
        max_concurrent_checks=_integer(
            section.get("max_concurrent_checks", defaults.max_concurrent_checks),
            f"{key_path}.max_concurrent_checks",
            minimum=1,
            maximum=100_000,
        ),
    )


def parse_settings(data: object) -> Settings:
    """Build :class:`Settings` from the parsed YAML document (a mapping, or None for empty)."""
    from imagewarden.prepull.pools import parse_prepull

    top = _section(data, "")
    _check_keys(
        top,
        "",
        {"registries", "credentials", "policy", "profiles", "checker", "service", "prepull"},
    )
    registries: dict[str, RegistrySettings] = {}
    spelled: dict[str, str] = {}
    for host, registry in _section(top.get("registries"), "registries").items():
        key_path = f"registries.{host}"
        normalized = _registry_host(host, key_path)
        if normalized in spelled:
            # QUAY.IO and quay.io (or index.docker.io and docker.io) are one registry; keeping
            # whichever came last would silently drop the other's settings.
            raise ConfigError(
                key_path,
                f"{values.shown(host)} is the same registry as registries.{spelled[normalized]}; "
                "merge the two entries",
            )
        spelled[normalized] = host
        registries[normalized] = _registry(registry, key_path)

    credentials = _section(top.get("credentials"), "credentials")
    _check_keys(credentials, "credentials", {"docker_config", "dockerconfigjson_files"})

    policy = _section(top.get("policy"), "policy")
    _check_keys(policy, "policy", {"allow", "deny"})
    allow = (
        DEFAULT_SETTINGS.allow if "allow" not in policy else _rules(policy["allow"], "policy.allow")
    )

    profiles = {
        _string(name, "profiles", max_chars=255): _profile(profile, f"profiles.{name}")
        for name, profile in _section(top.get("profiles"), "profiles").items()
    }
    return Settings(
        registries=registries,
        credentials=CredentialsSettings(
            docker_config=_optional_string(
                credentials.get("docker_config"), "credentials.docker_config"
            ),
            dockerconfigjson_files=_string_list(
                credentials.get("dockerconfigjson_files"), "credentials.dockerconfigjson_files"
            ),
        ),
        allow=allow,
        deny=_rules(policy.get("deny"), "policy.deny"),
        profiles=profiles,
        checker=_checker(top.get("checker"), "checker"),
        service=_service(top.get("service"), "service"),
        prepull=parse_prepull(top.get("prepull"), "prepull"),
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return DEFAULT_SETTINGS
    file = Path(path)
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError("", f"cannot read config file {str(file)!r}: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"config file {str(file)!r} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", f"config file {str(file)!r} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ConfigError("", f"config file {str(file)!r} is not valid YAML: {error}") from None
    except RecursionError:
        # PyYAML parses nesting recursively: 1000 "[" in a 2 kB file exhaust the stack.
        raise ConfigError("", f"config file {str(file)!r} is nested too deeply") from None
    return parse_settings(data)
