"""Pre-pull pools: which images go onto which nodes, from the config file's ``prepull:`` section.

A *pool* is a set of nodes picked by a nodeSelector, tolerations and an optional affinity,
plus the images every node of it should hold before the first user arrives.  Pools come
from two places, both in ``prepull:``:

- ``pools:`` written out by the operator (``nodeSelector``, ``tolerations``, ``affinity``,
  ``images`` …, named as in a pod spec because they are copied into one), and
- ``profile_list:``, a KubeSpawner ``profile_list`` as written in z2jh's
  ``singleuser.profileList``: every image a profile can run (its ``kubespawner_override``
  and every listed choice of its ``profile_options``) goes to the pool of the nodes the
  profile's pods are scheduled on (``node_selector``, ``tolerations``,
  ``node_affinity_required`` after KubeSpawner's override rules).  Free-text
  ``unlisted_choice`` templates (``{value}``) name no image in advance and are skipped.
  Every such decision is recorded as a :class:`Placement` for ``prepull render --explain``.

Parsing is strict: unknown keys are errors and every :class:`~imagewarden.errors.ConfigError`
names the exact key path (``prepull.pools.gpu.images[1]``).  Nothing here does I/O;
``prepull.render`` turns a :class:`PrepullConfig` into DaemonSets next.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from imagewarden import _values as values
from imagewarden.errors import ConfigError, InvalidReference
from imagewarden.reference import parse

__all__ = [
    "DEFAULT_NOOP_IMAGE",
    "MAX_IMAGES_PER_POOL",
    "MAX_POOLS",
    "KubeSpawnerDefaults",
    "Placement",
    "Pool",
    "PrepullConfig",
    "derive_profile_pools",
    "parse_prepull",
    "scheduling_key",
]

DEFAULT_NOOP_IMAGE: Final = "quay.io/imagewarden/imagewarden:0.1.0"
"""The imagewarden image whose no-op binary the init containers copy (``noop_image``)."""

MAX_POOLS: Final = 64
"""Pools per config: each is a DaemonSet on every matching node, so more is a mistake."""

MAX_IMAGES_PER_POOL: Final = 100
"""Images per pool: each is an init container; a pod spec of thousands would be refused anyway."""

MAX_PROFILE_COMBINATIONS: Final = 4096
"""Choice combinations enumerated per profile before the profile is refused as too large."""

MAX_CONFIG_NODES: Final = 50_000
"""Values (scalars, lists, mappings) walked in ``prepull:``; guards against YAML alias bombs."""

MAX_STRING_CHARS: Final = 4096
"""Longest string accepted anywhere in ``prepull:`` (image references are far shorter)."""

POOL_NAME_MAX_CHARS: Final = 40
"""Pool names become ``imagewarden-prepull-NAME`` DaemonSets, which must stay a 63-char label."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_PLATFORM = re.compile(r"[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_.]+)?")
_TOLERATION_OPERATORS: Final = ("Exists", "Equal")
_TOLERATION_EFFECTS: Final = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
_AFFINITY_KEYS: Final = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_TEMPLATE_MARK: Final = "{value}"

Json = Any
"""A value made only of dict/list/str/int/float/bool/None (what YAML and JSON give)."""


@dataclass(frozen=True)
class Pool:
    """One group of nodes and the images each of them should hold."""

    name: str
    """DNS label, also the ``imagewarden.io/pool`` label value and the DaemonSet's suffix."""

    images: tuple[str, ...] = ()
    """Normalized references (``str(parse(...))``) in the order they were configured."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    """Copied to the pod spec's ``nodeSelector``; empty means every schedulable node."""

    tolerations: tuple[Mapping[str, Json], ...] = ()
    """Copied to the pod spec's ``tolerations`` so tainted (e.g. GPU) nodes accept the pod."""

    affinity: Mapping[str, Json] | None = None
    """Copied to the pod spec's ``affinity``; checked in shape only (the API server checks all)."""

    priority_class_name: str | None = None
    """Overrides :attr:`PrepullConfig.priority_class_name` for this pool's pods."""

    platform: str | None = None
    """Platform used to resolve sizes (``linux/arm64`` pools); ``None`` means the config default."""

    image_uses: Mapping[str, int] = field(default_factory=dict)
    """How many profile choices (or config entries) ask for each image; more-used pull first."""

    from_profiles: bool = False
    """True when the pool was made from ``profile_list`` rather than written under ``pools:``."""


@dataclass(frozen=True)
class Placement:
    """One line of ``prepull render --explain``: why an image is (or is not) in a pool."""

    profile: str
    """The profile's slug (or one made from ``display_name``, as KubeSpawner does)."""

    source: str
    """Which override named the image: ``kubespawner_override``, ``OPTION.CHOICE``, ``defaults``."""

    image: str | None
    """Normalized reference, or ``None`` when the choice names no image in advance."""

    pool: str | None
    """The pool the image went to, or ``None`` when skipped (see :attr:`note`)."""

    note: str = ""
    """Why it was skipped, or that it joined a pool written under ``pools:``."""


@dataclass(frozen=True)
class KubeSpawnerDefaults:
    """KubeSpawner's own settings that profiles override (``c.KubeSpawner.*``, z2jh singleuser)."""

    image: str | None = None
    """``c.KubeSpawner.image``: what a profile without an image runs; ``None`` skips such ones."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    """``c.KubeSpawner.node_selector``; profile overrides are merged into it key by key."""

    tolerations: tuple[Mapping[str, Json], ...] = ()
    """``c.KubeSpawner.tolerations``; a profile override replaces the whole list."""

    node_affinity_required: tuple[Mapping[str, Json], ...] = ()
    """``c.KubeSpawner.node_affinity_required`` (NodeSelectorTerms); replaced by overrides."""


@dataclass(frozen=True)
class PrepullConfig:
    """The whole ``prepull:`` section; ``PrepullConfig()`` means pre-pull nothing."""

    namespace: str | None = None
    """Namespace of the DaemonSets and Lease; ``None`` means the controller's own namespace."""

    pools: Mapping[str, Pool] = field(default_factory=dict)
    """Every pool by name: those written under ``pools:`` and those made from ``profile_list``."""

    noop_image: str = DEFAULT_NOOP_IMAGE
    """Image holding the no-op binary (the imagewarden image); normalized reference."""

    priority_class_name: str | None = None
    """PriorityClass of pre-pull pods; a low one lets user pods evict them.  ``None``: none set."""

    image_pull_secrets: tuple[str, ...] = ()
    """Secret names for private registries, copied to every pre-pull pod's ``imagePullSecrets``."""

    platform: str = "linux/amd64"
    """Platform whose manifest gives image sizes when a pool does not say otherwise."""

    resolve_interval_seconds: float = 300.0
    """How often the controller re-resolves tags; five minutes notices a moved tag well
    within a working day without a noticeable share of a registry's rate limit."""

    explanation: tuple[Placement, ...] = ()
    """What ``profile_list`` contributed, for ``prepull render --explain``."""


# ---------------------------------------------------------------------------------------------
# Generic checks: each takes the value and its key path and raises ConfigError on misuse.


def _string(value: object, key_path: str, *, max_chars: int = MAX_STRING_CHARS) -> str:
    return values.string(value, key_path, max_chars=max_chars)


def _check_size(value: object, key_path: str) -> None:
    """Walk ``value`` once, refusing non-JSON types, huge strings and alias-bomb sized trees."""
    budget = MAX_CONFIG_NODES
    stack: list[tuple[object, str, int]] = [(value, key_path, 0)]
    while stack:
        item, path, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(key_path, f"is too large (more than {MAX_CONFIG_NODES} values)")
        if depth > 64:
            raise ConfigError(path, "is nested more than 64 levels deep")
        if isinstance(item, str):
            if len(item) > MAX_STRING_CHARS:
                raise ConfigError(
                    path, f"is {len(item)} characters long; at most {MAX_STRING_CHARS} allowed"
                )
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise ConfigError(path, f"keys must be strings, got {key!r}")
                stack.append((sub, values.child(path, key), depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{index}]", depth + 1) for index, sub in enumerate(item))
        elif item is not None and not isinstance(item, bool | int | float):
            raise ConfigError(path, f"must be plain YAML data, got {values.type_name(item)}")


def _dns_label(value: object, key_path: str, *, max_chars: int = 63, what: str = "name") -> str:
    text = _string(value, key_path, max_chars=max_chars)
    if not _DNS_LABEL.fullmatch(text):
        raise ConfigError(
            key_path,
            f"{what} {text!r} must be lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return text


def _dns_subdomain(value: object, key_path: str) -> str:
    text = _string(value, key_path, max_chars=253)
    if not _DNS_SUBDOMAIN.fullmatch(text):
        raise ConfigError(
            key_path, f"{text!r} must be a DNS subdomain (lower-case letters, digits, '-', '.')"
        )
    return text


def _label_key(key: str, key_path: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ConfigError(key_path, f"label key prefix {prefix[:80]!r} must be a DNS subdomain")
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ConfigError(
            key_path,
            f"label key name {name[:80]!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )


def _label_value(value: object, key_path: str) -> str:
    text = _string(value, key_path)
    if text and (len(text) > 63 or not _LABEL_NAME.fullmatch(text)):
        raise ConfigError(
            key_path,
            f"label value {text[:80]!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )
    return text


def _node_selector(value: object, key_path: str) -> dict[str, str]:
    mapping = values.mapping(value, key_path)
    result: dict[str, str] = {}
    for key, label in mapping.items():
        path = values.child(key_path, key)
        _label_key(key, path)
        result[key] = _label_value(label, path)
    return result


def _toleration(value: object, key_path: str) -> dict[str, Json]:
    mapping = values.mapping(value, key_path)
    values.known_keys(
        mapping, key_path, ("key", "operator", "value", "effect", "tolerationSeconds")
    )
    result: dict[str, Json] = {}
    if "key" in mapping:
        key = _string(mapping["key"], f"{key_path}.key")
        if key:
            _label_key(key, f"{key_path}.key")
        result["key"] = key
    operator = mapping.get("operator", "Equal")
    if operator not in _TOLERATION_OPERATORS:
        raise ConfigError(f"{key_path}.operator", f"must be Exists or Equal, got {operator!r}")
    if "operator" in mapping:
        result["operator"] = operator
    if "value" in mapping:
        if operator == "Exists" and mapping["value"]:
            raise ConfigError(f"{key_path}.value", "must be empty when operator is Exists")
        result["value"] = _label_value(mapping["value"], f"{key_path}.value")
    if not result.get("key") and operator != "Exists":
        raise ConfigError(key_path, "a toleration without a key must use operator: Exists")
    if "effect" in mapping:
        effect = mapping["effect"]
        if effect not in _TOLERATION_EFFECTS:
            raise ConfigError(
                f"{key_path}.effect",
                f"must be one of NoSchedule, PreferNoSchedule, NoExecute, got {effect!r}",
            )
        result["effect"] = effect
    if "tolerationSeconds" in mapping:
        seconds = mapping["tolerationSeconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise ConfigError(f"{key_path}.tolerationSeconds", "must be an integer")
        if result.get("effect") != "NoExecute":
            raise ConfigError(
                f"{key_path}.tolerationSeconds", "is only allowed with effect: NoExecute"
            )
        result["tolerationSeconds"] = seconds
    return result


def _tolerations(value: object, key_path: str) -> tuple[dict[str, Json], ...]:
    items = values.sequence(value, key_path, max_items=64)
    return tuple(_toleration(item, f"{key_path}[{i}]") for i, item in enumerate(items))


def _get(mapping: Mapping[str, Json], key: str, default: Json) -> Json:
    """``mapping[key]``, or ``default`` when missing or null (but not when empty-and-wrong-type)."""
    value = mapping.get(key)
    return default if value is None else value


def _json_copy(mapping: Mapping[str, Json]) -> dict[str, Json]:
    """A private deep copy, so later edits of the caller's data cannot change a parsed pool."""
    copied: dict[str, Json] = json.loads(json.dumps(mapping))
    return copied


def _affinity(value: object, key_path: str) -> dict[str, Json]:
    mapping = values.mapping(value, key_path)
    values.known_keys(mapping, key_path, _AFFINITY_KEYS)
    for key, sub in mapping.items():
        values.mapping(sub, f"{key_path}.{key}")
    return _json_copy(mapping)


def _node_selector_terms(value: object, key_path: str) -> tuple[dict[str, Json], ...]:
    items = values.sequence(value, key_path, max_items=64)
    terms: list[dict[str, Json]] = []
    for index, item in enumerate(items):
        path = f"{key_path}[{index}]"
        term = values.mapping(item, path)
        values.known_keys(term, path, ("matchExpressions", "matchFields"))
        terms.append(_json_copy(term))
    return tuple(terms)


def _image(value: object, key_path: str) -> str:
    text = _string(value, key_path, max_chars=1024)
    try:
        return str(parse(text))
    except InvalidReference as error:
        raise ConfigError(key_path, f"{text[:200]!r} is not an image reference: {error}") from None


def _platform(value: object, key_path: str) -> str:
    text = _string(value, key_path, max_chars=64)
    if not _PLATFORM.fullmatch(text):
        raise ConfigError(key_path, f"{text!r} must look like os/arch[/variant], e.g. linux/arm64")
    return text


def _positive_seconds(value: object, key_path: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key_path, f"must be a number of seconds, got {values.type_name(value)}")
    if not minimum <= value <= 7 * 24 * 3600:
        raise ConfigError(key_path, f"must be between {minimum:g} and 604800 seconds, got {value}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Scheduling keys: pools with the same placement are the same pool.


def scheduling_key(
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, Json]],
    affinity: Mapping[str, Json] | None,
) -> str:
    """Canonical JSON of a placement, so that equal placements compare equal whatever the order."""
    canonical = {
        "nodeSelector": dict(sorted(node_selector.items())),
        "tolerations": sorted(json.dumps(t, sort_keys=True) for t in tolerations),
        "affinity": affinity or None,
    }
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def _pool_key(pool: Pool) -> str:
    return scheduling_key(pool.node_selector, pool.tolerations, pool.affinity)


def _affinity_from_terms(terms: Sequence[Mapping[str, Json]]) -> dict[str, Json] | None:
    if not terms:
        return None
    required = {"nodeSelectorTerms": [dict(t) for t in terms]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


# ---------------------------------------------------------------------------------------------
# Pools written out under ``pools:``.

_POOL_KEYS: Final = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "images",
    "priorityClassName",
    "platform",
)


def _parse_pool(name: str, value: object, key_path: str) -> Pool:
    mapping = values.mapping(value, key_path)
    values.known_keys(mapping, key_path, _POOL_KEYS)
    images_path = f"{key_path}.images"
    if "images" not in mapping:
        raise ConfigError(images_path, "is required (the images this pool pre-pulls)")
    raw_images = values.sequence(mapping["images"], images_path, max_items=MAX_IMAGES_PER_POOL)
    images: list[str] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_images):
        image = _image(raw, f"{images_path}[{index}]")
        if image in first_index:
            raise ConfigError(
                f"{images_path}[{index}]",
                f"{image} is already listed as images[{first_index[image]}]",
            )
        first_index[image] = index
        images.append(image)
    return Pool(
        name=name,
        images=tuple(images),
        node_selector=_node_selector(mapping.get("nodeSelector", {}), f"{key_path}.nodeSelector"),
        tolerations=_tolerations(mapping.get("tolerations", []), f"{key_path}.tolerations"),
        affinity=(
            _affinity(mapping["affinity"], f"{key_path}.affinity")
            if mapping.get("affinity") is not None
            else None
        ),
        priority_class_name=(
            _dns_subdomain(mapping["priorityClassName"], f"{key_path}.priorityClassName")
            if mapping.get("priorityClassName") is not None
            else None
        ),
        platform=(
            _platform(mapping["platform"], f"{key_path}.platform")
            if mapping.get("platform") is not None
            else None
        ),
        image_uses=dict.fromkeys(images, 1),
    )


# ---------------------------------------------------------------------------------------------
# Pools made from a KubeSpawner profile_list.

_PROFILE_KEYS: Final = (
    "display_name",
    "slug",
    "default",
    "description",
    "kubespawner_override",
    "profile_options",
)
_OPTION_KEYS: Final = ("display_name", "choices", "unlisted_choice")
_CHOICE_KEYS: Final = ("display_name", "description", "default", "kubespawner_override")
_UNLISTED_KEYS: Final = (
    "enabled",
    "display_name",
    "display_name_in_choices",
    "validation_regex",
    "validation_message",
    "kubespawner_override",
)
_DEFAULTS_KEYS: Final = ("image", "node_selector", "tolerations", "node_affinity_required")


@dataclass
class _SpawnerState:
    """The few KubeSpawner settings that decide what a pod pulls and where it runs."""

    image: str | None
    node_selector: dict[str, Json]
    tolerations: list[Json]
    node_affinity_required: list[Json]
    image_source: str
    paths: dict[str, str]  # setting -> key path of the override that set it last
    templated: bool = False  # a scheduling value still holds an unlisted-choice ``{value}``

    def copy(self) -> _SpawnerState:
        return _SpawnerState(
            self.image,
            json.loads(json.dumps(self.node_selector)),
            list(self.tolerations),
            list(self.node_affinity_required),
            self.image_source,
            dict(self.paths),
            self.templated,
        )


@dataclass(frozen=True)
class _Alternative:
    """One way an option can be answered: a listed choice or the free-text box."""

    label: str
    override: Mapping[str, Json]
    path: str


def _contains_template(value: Json) -> bool:
    if isinstance(value, str):
        return _TEMPLATE_MARK in value
    if isinstance(value, Mapping):
        return any(_contains_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_template(v) for v in value)
    return False


def _merge_into(target: dict[str, Json], new: Mapping[str, Json]) -> None:
    """KubeSpawner's ``recursive_update``: dicts merge, ``None`` deletes a key."""
    for key, value in new.items():
        if isinstance(value, Mapping):
            sub = target.get(key)
            if not isinstance(sub, dict):
                sub = target[key] = {}
            _merge_into(sub, value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _apply_override(
    state: _SpawnerState, override: Mapping[str, Json], source: str, key_path: str
) -> None:
    for name, value in override.items():
        path = f"{key_path}.{name}"
        if name in ("image", "image_spec"):
            state.image = value
            state.image_source = source
            state.paths["image"] = path
        elif name == "node_selector":
            if value is None:
                state.node_selector = {}
            else:
                _merge_into(state.node_selector, value)
            state.templated |= _contains_template(value)
            state.paths[name] = path
        elif name in ("tolerations", "node_affinity_required"):
            setattr(state, name, list(value or []))
            state.templated |= _contains_template(value)
            state.paths[name] = path


def _check_override(value: object, key_path: str) -> Mapping[str, Json]:
    """Type-check the overrides we read; other KubeSpawner settings are KubeSpawner's business."""
    override = values.mapping(value, key_path)
    for name in ("image", "image_spec"):
        if name in override and override[name] is not None:
            _string(override[name], f"{key_path}.{name}", max_chars=1024)
    if override.get("node_selector") is not None:
        selector = values.mapping(override["node_selector"], f"{key_path}.node_selector")
        for key, label in selector.items():
            if label is not None:
                _string(label, values.child(f"{key_path}.node_selector", key))
    if override.get("tolerations") is not None:
        values.sequence(override["tolerations"], f"{key_path}.tolerations", max_items=64)
    if override.get("node_affinity_required") is not None:
        values.sequence(
            override["node_affinity_required"], f"{key_path}.node_affinity_required", max_items=64
        )
    return override


def _slugify(display_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")
    return slug or "profile"


def _profile_entries(value: object, key_path: str) -> Iterator[tuple[str, Mapping[str, Json]]]:
    """Profiles as (key path, mapping); ``profile_list`` may be a list or a dict keyed by slug."""
    if isinstance(value, list):
        items = values.sequence(value, key_path, max_items=256)
        for index, item in enumerate(items):
            yield f"{key_path}[{index}]", values.mapping(item, f"{key_path}[{index}]")
    else:
        mapping = values.mapping(value, key_path)
        if len(mapping) > 256:
            raise ConfigError(key_path, f"has {len(mapping)} profiles; at most 256 are allowed")
        for key, item in mapping.items():
            yield values.child(key_path, key), values.mapping(item, values.child(key_path, key))


def _profile_alternatives(
    options: Mapping[str, Json], key_path: str
) -> list[tuple[str, list[_Alternative]]]:
    result: list[tuple[str, list[_Alternative]]] = []
    for option_name, raw_option in options.items():
        option_path = values.child(key_path, option_name)
        option = values.mapping(raw_option, option_path)
        values.known_keys(option, option_path, _OPTION_KEYS)
        alternatives: list[_Alternative] = []
        choices = values.mapping(_get(option, "choices", {}), f"{option_path}.choices")
        for choice_name, raw_choice in choices.items():
            choice_path = values.child(f"{option_path}.choices", choice_name)
            choice = values.mapping(raw_choice, choice_path)
            values.known_keys(choice, choice_path, _CHOICE_KEYS)
            override = _check_override(
                _get(choice, "kubespawner_override", {}), f"{choice_path}.kubespawner_override"
            )
            alternatives.append(_Alternative(f"{option_name}.{choice_name}", override, choice_path))
        unlisted = values.mapping(
            _get(option, "unlisted_choice", {}), f"{option_path}.unlisted_choice"
        )
        values.known_keys(unlisted, f"{option_path}.unlisted_choice", _UNLISTED_KEYS)
        if unlisted.get("enabled"):
            unlisted_path = f"{option_path}.unlisted_choice"
            override = _check_override(
                _get(unlisted, "kubespawner_override", {}), f"{unlisted_path}.kubespawner_override"
            )
            alternatives.append(
                _Alternative(f"{option_name}.unlisted_choice", override, unlisted_path)
            )
        if alternatives:
            result.append((option_name, alternatives))
    return result


def _parse_defaults(value: object, key_path: str) -> KubeSpawnerDefaults:
    mapping = values.mapping(value, key_path)
    values.known_keys(mapping, key_path, _DEFAULTS_KEYS)
    return KubeSpawnerDefaults(
        image=(
            _image(mapping["image"], f"{key_path}.image")
            if mapping.get("image") is not None
            else None
        ),
        node_selector=_node_selector(
            _get(mapping, "node_selector", {}), f"{key_path}.node_selector"
        ),
        tolerations=_tolerations(_get(mapping, "tolerations", []), f"{key_path}.tolerations"),
        node_affinity_required=_node_selector_terms(
            _get(mapping, "node_affinity_required", []), f"{key_path}.node_affinity_required"
        ),
    )


def _derived_pool_name(node_selector: Mapping[str, str], key: str) -> str:
    readable = "any-node"
    if node_selector:
        values = "-".join(value for _, value in sorted(node_selector.items()))
        readable = re.sub(r"[^a-z0-9]+", "-", values.lower()).strip("-")[:22].strip("-")
        readable = readable or "nodes"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


@dataclass
class _PoolDraft:
    name: str
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Json], ...]
    affinity: dict[str, Json] | None
    explicit: bool
    images: list[str] = field(default_factory=list)
    uses: dict[str, int] = field(default_factory=dict)

    def add(self, image: str) -> None:
        if image not in self.uses:
            self.images.append(image)
            self.uses[image] = 0
        self.uses[image] += 1


def derive_profile_pools(
    profile_list: object,
    *,
    defaults: KubeSpawnerDefaults | None = None,
    existing: Mapping[str, Pool] | None = None,
    key_path: str = "prepull.profile_list",
) -> tuple[dict[str, Pool], tuple[Placement, ...]]:
    """Group every image a profile can run by where its pods are scheduled.

    Returns the updated pools and the placements for ``--explain``.  ``existing`` pools
    with the same placement gain the images; a new placement becomes a pool named after
    its nodeSelector values plus a hash of the placement, so the name (and with it
    the DaemonSet) stays put when profiles are renamed or reordered.  Every combination
    of listed choices is considered, because a choice of one option may move the pod
    (``node_selector``) while another picks the image.  Raises :class:`ConfigError` on a
    malformed profile.
    """
    defaults = defaults or KubeSpawnerDefaults()
    pools: dict[str, Pool] = dict(existing or {})
    drafts: dict[str, _PoolDraft] = {}
    for pool in pools.values():
        drafts[_pool_key(pool)] = _PoolDraft(
            pool.name,
            dict(pool.node_selector),
            tuple(dict(t) for t in pool.tolerations),
            dict(pool.affinity) if pool.affinity else None,
            explicit=True,
            images=list(pool.images),
            uses=dict(pool.image_uses),
        )
    placements: list[Placement] = []

    for profile_path, profile in _profile_entries(profile_list, key_path):
        values.known_keys(profile, profile_path, _PROFILE_KEYS)
        if "slug" in profile:
            slug = _string(profile["slug"], f"{profile_path}.slug", max_chars=256)
        else:
            display_name = _string(
                profile.get("display_name", ""), f"{profile_path}.display_name", max_chars=1024
            )
            slug = _slugify(display_name)
        defaults_path = key_path.rpartition(".")[0] + ".kubespawner_defaults"
        base = _SpawnerState(
            defaults.image,
            dict(defaults.node_selector),
            [dict(t) for t in defaults.tolerations],
            [dict(t) for t in defaults.node_affinity_required],
            "defaults",
            dict.fromkeys(
                ("image", "node_selector", "tolerations", "node_affinity_required"),
                defaults_path,
            ),
        )
        profile_override_path = f"{profile_path}.kubespawner_override"
        _apply_override(
            base,
            _check_override(_get(profile, "kubespawner_override", {}), profile_override_path),
            "kubespawner_override",
            profile_override_path,
        )
        options = _profile_alternatives(
            values.mapping(_get(profile, "profile_options", {}), f"{profile_path}.profile_options"),
            f"{profile_path}.profile_options",
        )
        combinations = 1
        for _, alternatives in options:
            combinations *= len(alternatives)
            if combinations > MAX_PROFILE_COMBINATIONS:
                raise ConfigError(
                    f"{profile_path}.profile_options",
                    f"allow more than {MAX_PROFILE_COMBINATIONS} combinations of choices",
                )
        seen: set[Placement] = set()
        for picked in itertools.product(*(alternatives for _, alternatives in options)):
            state = base.copy()
            for alternative in picked:
                _apply_override(
                    state,
                    alternative.override,
                    alternative.label,
                    f"{alternative.path}.kubespawner_override",
                )
            placement = _place(state, slug, drafts)
            if placement not in seen:
                seen.add(placement)
                placements.append(placement)

    names = {draft.name: draft for draft in drafts.values()}
    if len(names) != len(drafts):  # a derived name equal to a written-out pool's name
        clash = next(d.name for d in drafts.values() if names[d.name] is not d)
        raise ConfigError(
            key_path, f"makes a pool named {clash!r}, which prepull.pools already uses"
        )
    for draft in drafts.values():
        if len(draft.images) > MAX_IMAGES_PER_POOL:
            raise ConfigError(
                key_path,
                f"puts {len(draft.images)} images into pool {draft.name}; "
                f"at most {MAX_IMAGES_PER_POOL} are allowed",
            )
        old = pools.get(draft.name)
        pools[draft.name] = Pool(
            name=draft.name,
            images=tuple(draft.images),
            node_selector=draft.node_selector,
            tolerations=draft.tolerations,
            affinity=draft.affinity,
            priority_class_name=old.priority_class_name if old else None,
            platform=old.platform if old else None,
            image_uses=dict(draft.uses),
            from_profiles=not draft.explicit,
        )
    return pools, tuple(placements)


def _place(state: _SpawnerState, slug: str, drafts: dict[str, _PoolDraft]) -> Placement:
    """Put the image of one choice combination into its pool, or say why it was skipped."""
    source = state.image_source
    if state.image is None:
        return Placement(slug, source, None, None, "no image set (no kubespawner_defaults.image)")
    if _contains_template(state.image):
        return Placement(slug, source, None, None, "free-text choice: image unknown in advance")
    if state.templated:
        return Placement(
            slug, source, None, None, "free-text choice decides the nodes: placement unknown"
        )
    image = _image(state.image, state.paths["image"])
    node_selector = _node_selector(state.node_selector, state.paths["node_selector"])
    tolerations = _tolerations(state.tolerations, state.paths["tolerations"])
    terms = _node_selector_terms(
        state.node_affinity_required, state.paths["node_affinity_required"]
    )
    affinity = _affinity_from_terms(terms)
    key = scheduling_key(node_selector, tolerations, affinity)
    draft = drafts.get(key)
    if draft is None:
        name = _derived_pool_name(node_selector, key)
        draft = drafts[key] = _PoolDraft(name, node_selector, tolerations, affinity, explicit=False)
    draft.add(image)
    note = "same nodes as a pool under prepull.pools" if draft.explicit else ""
    return Placement(slug, source, image, draft.name, note)


# ---------------------------------------------------------------------------------------------
# The ``prepull:`` section.

_TOP_KEYS: Final = (
    "namespace",
    "pools",
    "noop_image",
    "priority_class_name",
    "image_pull_secrets",
    "platform",
    "resolve_interval_seconds",
    "profile_list",
    "kubespawner_defaults",
)


def parse_prepull(data: object, key_path: str = "prepull") -> PrepullConfig:
    """Parse the ``prepull:`` section (``None`` or missing means no pools).

    Raises :class:`~imagewarden.errors.ConfigError` naming the key path of the first
    problem; nothing is returned half-parsed.
    """
    if data is None:
        return PrepullConfig()
    _check_size(data, key_path)
    section = values.mapping(data, key_path)
    values.known_keys(section, key_path, _TOP_KEYS)

    pools_path = f"{key_path}.pools"
    raw_pools = values.mapping(_get(section, "pools", {}), pools_path)
    if len(raw_pools) > MAX_POOLS:
        raise ConfigError(pools_path, f"has {len(raw_pools)} pools; at most {MAX_POOLS} allowed")
    pools: dict[str, Pool] = {}
    seen_keys: dict[str, str] = {}
    for name, raw_pool in raw_pools.items():
        pool_path = values.child(pools_path, name)
        _dns_label(name, pool_path, max_chars=POOL_NAME_MAX_CHARS, what="pool name")
        pool = _parse_pool(name, raw_pool, pool_path)
        key = _pool_key(pool)
        if key in seen_keys:
            raise ConfigError(
                pool_path,
                f"selects the same nodes as pool {seen_keys[key]!r}; merge their images "
                "into one pool",
            )
        seen_keys[key] = name
        pools[name] = pool

    explanation: tuple[Placement, ...] = ()
    if section.get("profile_list") is not None:
        defaults = _parse_defaults(
            _get(section, "kubespawner_defaults", {}), f"{key_path}.kubespawner_defaults"
        )
        pools, explanation = derive_profile_pools(
            section["profile_list"],
            defaults=defaults,
            existing=pools,
            key_path=f"{key_path}.profile_list",
        )
        if len(pools) > MAX_POOLS:
            raise ConfigError(
                f"{key_path}.profile_list", f"makes {len(pools)} pools; at most {MAX_POOLS} allowed"
            )
    elif section.get("kubespawner_defaults") is not None:
        raise ConfigError(
            f"{key_path}.kubespawner_defaults", "is only used together with profile_list"
        )

    secrets_path = f"{key_path}.image_pull_secrets"
    secrets = values.sequence(_get(section, "image_pull_secrets", []), secrets_path, max_items=32)
    return PrepullConfig(
        namespace=(
            _dns_label(section["namespace"], f"{key_path}.namespace", what="namespace")
            if section.get("namespace") is not None
            else None
        ),
        pools=pools,
        noop_image=(
            _image(section["noop_image"], f"{key_path}.noop_image")
            if section.get("noop_image") is not None
            else DEFAULT_NOOP_IMAGE
        ),
        priority_class_name=(
            _dns_subdomain(section["priority_class_name"], f"{key_path}.priority_class_name")
            if section.get("priority_class_name") is not None
            else None
        ),
        image_pull_secrets=tuple(
            _dns_subdomain(s, f"{secrets_path}[{i}]") for i, s in enumerate(secrets)
        ),
        platform=(
            _platform(section["platform"], f"{key_path}.platform")
            if section.get("platform") is not None
            else "linux/amd64"
        ),
        resolve_interval_seconds=(
            _positive_seconds(
                section["resolve_interval_seconds"],
                f"{key_path}.resolve_interval_seconds",
                minimum=5,
            )
            if section.get("resolve_interval_seconds") is not None
            else 300.0
        ),
        explanation=explanation,
    )
