"""Manifest media types, parsing, platform selection, sizes and digest verification (pure).

:mod:`imagewarden.registry.client` fetches bytes; this module decides what they mean. Every
function here takes bytes or parsed JSON and raises :class:`InvalidRegistryResponseError` or
:class:`UnsupportedManifestError` with a sentence for the user.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from imagewarden.errors import InvalidRegistryResponseError, UnsupportedManifestError
from imagewarden.reference import DIGEST_HEX_LENGTHS

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
"""Every type we can use; without the OCI ones, distribution answers 404 for OCI indexes."""

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Cap on manifest and config bodies (distribution itself refuses manifests over 4 MiB)."""

_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` as in OCI index entries and image configs."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        return cls(parts[0], parts[1], parts[2] if len(parts) > 2 else None)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def satisfies(self, wanted: Platform) -> bool:
        """True when an image for ``self`` runs on nodes of ``wanted`` (variant only if asked)."""
        if (self.os, self.architecture) != (wanted.os, wanted.architecture):
            return False
        return wanted.variant is None or self.variant in (None, wanted.variant)


@dataclass(frozen=True)
class IndexEntry:
    digest: str
    media_type: str
    platform: Platform | None
    size_bytes: int


@dataclass(frozen=True)
class ImageManifest:
    """What a single-platform manifest tells: its config blob and compressed size."""

    config_digest: str
    size_bytes: int
    """Config plus every layer, compressed: what a node downloads."""


def verify_digest(body: bytes, digest: str, *, registry: str) -> None:
    """Raise unless ``body`` hashes to ``digest`` (content addressing is what pinning relies on)."""
    algorithm, _, expected = digest.partition(":")
    hash_factory = _HASHES.get(algorithm)
    if hash_factory is None:
        raise InvalidRegistryResponseError(
            f"{registry} named the manifest by an unknown digest algorithm {algorithm!r}.",
            registry=registry,
        )
    actual = hash_factory(body).hexdigest()
    if actual != expected:
        raise InvalidRegistryResponseError(
            f"{registry} sent a manifest whose content does not match its digest "
            f"{digest[:23]}…; the image cannot be trusted, so it is refused.",
            registry=registry,
        )


def is_digest(text: str) -> bool:
    """Whether ``text`` is ``ALGORITHM:HEX`` with a known algorithm and the right hex length."""
    algorithm, _, hex_part = text.partition(":")
    return (
        algorithm in DIGEST_HEX_LENGTHS
        and len(hex_part) == DIGEST_HEX_LENGTHS[algorithm]
        and all(ch in "0123456789abcdef" for ch in hex_part)
    )


def compute_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def load_json(body: bytes, *, registry: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRegistryResponseError(
            f"{registry} sent a {what} that is not valid JSON.", registry=registry
        ) from None
    if not isinstance(document, dict):
        raise InvalidRegistryResponseError(
            f"{registry} sent a {what} that is not a JSON object.", registry=registry
        )
    return document


def media_type_of(document: dict[str, Any], header_type: str | None) -> str:
    """The body's ``mediaType`` wins over Content-Type (some registries send text/plain)."""
    body_type = document.get("mediaType")
    if isinstance(body_type, str) and body_type:
        return body_type
    if document.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if header_type:
        return header_type.split(";")[0].strip()
    if "manifests" in document:
        return OCI_INDEX
    return OCI_MANIFEST


def refuse_schema1(media_type: str, *, registry: str, name: str) -> None:
    if media_type in SCHEMA1_TYPES:
        raise UnsupportedManifestError(
            f"{name} uses the old Docker schema 1 manifest format, which containerd 2 (and so "
            "newer Kubernetes nodes) can no longer pull; ask the image's maintainers to re-push "
            "it with a current Docker or podman, or pick a newer tag.",
            registry=registry,
        )


def _descriptor_size(value: object, *, registry: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRegistryResponseError(
            f"{registry} sent a manifest with an invalid size field.", registry=registry
        )
    return value


def parse_index(document: dict[str, Any], *, registry: str) -> tuple[IndexEntry, ...]:
    manifests = document.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidRegistryResponseError(
            f"{registry} sent an image index without a list of manifests.", registry=registry
        )
    entries: list[IndexEntry] = []
    for item in manifests:
        if not isinstance(item, dict) or not is_digest(str(item.get("digest", ""))):
            raise InvalidRegistryResponseError(
                f"{registry} sent an image index with a malformed entry.", registry=registry
            )
        platform = item.get("platform")
        parsed = None
        if isinstance(platform, dict):
            os_name, arch = platform.get("os"), platform.get("architecture")
            variant = platform.get("variant")
            if isinstance(os_name, str) and isinstance(arch, str):
                parsed = Platform(os_name, arch, variant if isinstance(variant, str) else None)
        entries.append(
            IndexEntry(
                digest=item["digest"],
                media_type=str(item.get("mediaType", "")),
                platform=parsed,
                size_bytes=_descriptor_size(item.get("size", 0), registry=registry),
            )
        )
    return tuple(entries)


def runnable_platforms(entries: tuple[IndexEntry, ...]) -> tuple[Platform, ...]:
    """Platforms of an index, without attestation entries (``unknown/unknown``)."""
    seen: dict[str, Platform] = {}
    for entry in entries:
        if entry.platform and entry.platform.os != "unknown":
            seen.setdefault(str(entry.platform), entry.platform)
    return tuple(seen.values())


def select_platform(entries: tuple[IndexEntry, ...], wanted: Platform) -> IndexEntry | None:
    """The best entry for ``wanted``: an exact variant match first, then any that satisfies."""
    candidates = [e for e in entries if e.platform and e.platform.satisfies(wanted)]
    exact = [e for e in candidates if e.platform and e.platform.variant == wanted.variant]
    best = exact or candidates
    return best[0] if best else None


def parse_image_manifest(document: dict[str, Any], *, registry: str) -> ImageManifest:
    config = document.get("config")
    layers = document.get("layers")
    if not isinstance(config, dict) or not is_digest(str(config.get("digest", ""))):
        raise InvalidRegistryResponseError(
            f"{registry} sent an image manifest without a config descriptor.", registry=registry
        )
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise InvalidRegistryResponseError(
            f"{registry} sent an image manifest without a list of layers.", registry=registry
        )
    size = _descriptor_size(config.get("size", 0), registry=registry)
    size += sum(_descriptor_size(layer.get("size", 0), registry=registry) for layer in layers)
    return ImageManifest(config_digest=config["digest"], size_bytes=size)


def platform_of_config(document: dict[str, Any]) -> Platform | None:
    os_name, arch = document.get("os"), document.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = document.get("variant")
    return Platform(os_name, arch, variant if isinstance(variant, str) else None)
