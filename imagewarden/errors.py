"""Every exception imagewarden raises, in one family under :class:`ImagewardenError`.

Other modules import their errors from here so that callers can catch by meaning
(``RegistryError.temporary``, ``ConfigError.key_path``) without importing backends.
"""

from __future__ import annotations


class ImagewardenError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidReference(ImagewardenError, ValueError):  # noqa: N818 - name fixed by DESIGN.md contract 1
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
