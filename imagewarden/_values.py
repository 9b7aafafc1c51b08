"""Strict readers for values parsed from YAML or JSON, shared by every config section.

Each reader checks one value and raises :class:`~imagewarden.errors.ConfigError` naming the key
path and showing the bad value (through a bounded repr, so an alias bomb never prints billions of
items). :mod:`imagewarden.config` and :mod:`imagewarden.prepull.pools` build their sections with
them, so an operator gets the same wording wherever a mistake sits.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from imagewarden.errors import ConfigError

_BOUNDED_REPR = reprlib.Repr()
_BOUNDED_REPR.maxlevel = 2
_BOUNDED_REPR.maxstring = _BOUNDED_REPR.maxother = 200
_BOUNDED_REPR.maxlist = _BOUNDED_REPR.maxdict = _BOUNDED_REPR.maxtuple = _BOUNDED_REPR.maxset = 4
_SHOWN_CHARS = 80
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]+")
_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}


def shown(value: object) -> str:
    """A repr of ``value`` cut to 80 characters, safe on huge or shared structures."""
    text = repr(value) if isinstance(value, str) else _BOUNDED_REPR.repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def type_name(value: object) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def got(value: object) -> str:
    """``a list ['a', 'b']``, ``int 5``, ``null``: what was found, for a message."""
    return "null" if value is None else f"{type_name(value)} {shown(value)}"


def child(key_path: str, key: str) -> str:
    """The key path of ``key`` under ``key_path``; odd keys are quoted so paths stay readable."""
    if not _PLAIN_KEY.fullmatch(key):
        return f"{key_path}[{json.dumps(key[:_SHOWN_CHARS])}]"
    return f"{key_path}.{key}" if key_path else key


def mapping(value: object, key_path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key_path, f"must be a mapping, got {got(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(key_path, f"keys must be strings, got {shown(key)}")
    return value


def known_keys(value: Mapping[str, Any], key_path: str, allowed: Sequence[str]) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(
                child(key_path, key), f"unknown key; expected one of: {', '.join(allowed)}"
            )


def sequence(value: object, key_path: str, *, max_items: int) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ConfigError(key_path, f"must be a list, got {got(value)}")
    if len(value) > max_items:
        raise ConfigError(key_path, f"has {len(value)} items; at most {max_items} are allowed")
    return value


def string(value: object, key_path: str, *, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ConfigError(key_path, f"must be a string, got {got(value)}")
    if len(value) > max_chars:
        raise ConfigError(key_path, f"is {len(value)} characters long; at most {max_chars} allowed")
    return value
