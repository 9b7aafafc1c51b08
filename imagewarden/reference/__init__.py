"""Image references: the docker/distribution grammar with Docker Hub normalization.

``parse`` turns what a person typed (``ubuntu:22.04``) into a normalized
:class:`Reference` (``docker.io/library/ubuntu:22.04``) or raises
:class:`InvalidReference` naming the broken rule. The policy and the registry client
work on its result. Layout, after distribution: ``grammar.py`` (named regex pieces),
``parse.py`` (strict grammar parse and refusal messages), ``normalize.py`` (Docker Hub
defaults and the ``Reference`` type).
"""

from imagewarden.errors import InvalidReference
from imagewarden.reference.normalize import (
    DEFAULT_DOMAIN,
    DOCKER_HUB_ALIASES,
    LEGACY_DEFAULT_DOMAIN,
    OFFICIAL_REPO_PREFIX,
    Reference,
    canonical_host,
    canonicalize,
    parse,
    parse_canonical,
)
from imagewarden.reference.parse import (
    DIGEST_HEX_LENGTHS,
    MAX_NAME_LENGTH,
    MAX_REFERENCE_LENGTH,
    MAX_TAG_LENGTH,
    ReferenceParts,
    parse_parts,
)

__all__ = [
    "DEFAULT_DOMAIN",
    "DIGEST_HEX_LENGTHS",
    "DOCKER_HUB_ALIASES",
    "LEGACY_DEFAULT_DOMAIN",
    "MAX_NAME_LENGTH",
    "MAX_REFERENCE_LENGTH",
    "MAX_TAG_LENGTH",
    "OFFICIAL_REPO_PREFIX",
    "InvalidReference",
    "Reference",
    "ReferenceParts",
    "canonical_host",
    "canonicalize",
    "parse",
    "parse_canonical",
    "parse_parts",
]
