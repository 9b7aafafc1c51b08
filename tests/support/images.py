"""Build OCI image layouts on disk with plain Python, for pushing to test registries.

No network and no container engine: each image is written as an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256/…``) that ``skopeo copy oci:DIR:TAG …``
pushes (see :mod:`tests.support.registry`). Layers are gzip'd tars with fixed mtimes,
owners and modes, so the same arguments always give the same digests; a ``salt``
makes an otherwise identical image distinct (for "the tag moved" tests).

Layer payloads are pseudo-random bytes, so they do not compress and the compressed
sizes the registry reports are close to the requested sizes. A layer may carry
Debian's static busybox (``/bin/busybox`` with ``/bin/sh`` and friends as symlinks)
so that an engine can run something; :meth:`ImageFactory.no_shell` builds an image
without any shell at all.

Multi-platform images are an OCI image index whose ``index.json`` entry points at the
index blob, which is what ``skopeo copy --all`` pushes as a multi-arch image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
SALT_LABEL = "org.imagewarden.test.salt"

BUSYBOX_PATH = Path("/bin/busybox")
"""Debian's ``busybox-static`` binary (a static x86-64 ELF)."""
BUSYBOX_APPLETS = ("sh", "true", "false", "sleep", "echo", "cat", "ls", "env", "id")
"""Applets linked to busybox in images built with ``busybox=True``."""

# Fixed metadata so layers are byte-for-byte reproducible.
_LAYER_MTIME = 1_600_000_000
_CREATED = "2023-09-11T00:00:00Z"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor for a blob written to a layout."""

    media_type: str
    """Media type of the blob."""
    digest: str
    """``sha256:<hex>`` of the blob bytes."""
    size_bytes: int
    """Length of the blob in bytes."""

    def as_json(self) -> dict[str, object]:
        """The descriptor as it appears inside a manifest or index."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size_bytes}


@dataclass(frozen=True)
class PlatformManifest:
    """One platform's image manifest inside an :class:`OciImage` (OCI media types)."""

    platform: str
    """``os/architecture[/variant]``, e.g. ``linux/arm64/v8``."""
    digest: str
    """Digest of the OCI manifest body."""
    manifest_size_bytes: int
    """Length of the manifest body."""
    config: Descriptor
    """The image config blob."""
    layers: tuple[Descriptor, ...]
    """The layer blobs, bottom first."""

    @property
    def size_bytes(self) -> int:
        """Compressed image size as a registry client sums it: config plus layers."""
        return self.config.size_bytes + sum(layer.size_bytes for layer in self.layers)

    @property
    def os_arch(self) -> str:
        """``os/architecture`` without the variant (``linux/arm64``)."""
        return "/".join(self.platform.split("/")[:2])


@dataclass(frozen=True)
class OciImage:
    """An image written as an OCI layout in ``layout_dir`` under the name ``tag``."""

    layout_dir: Path
    """Directory holding ``oci-layout``, ``index.json`` and ``blobs/``."""
    tag: str
    """Reference name of the image inside the layout (``oci:DIR:TAG``)."""
    digest: str
    """Digest of the top-level manifest in OCI form (the index digest for multi-platform)."""
    media_type: str
    """Media type of the top-level manifest (OCI index or OCI manifest)."""
    manifests: tuple[PlatformManifest, ...]
    """Per-platform manifests; one entry for single-platform images."""
    has_shell: bool
    """True when ``/bin/sh`` exists in the image (busybox layer)."""
    salt: str
    """The salt the image was built with (empty for the deterministic default)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Config labels written into each platform's config."""

    @property
    def is_index(self) -> bool:
        """True when the top-level manifest is an image index."""
        return self.media_type == OCI_INDEX

    @property
    def platforms(self) -> list[str]:
        """``os/architecture`` of every platform, in index order."""
        return [manifest.os_arch for manifest in self.manifests]

    @property
    def layout_ref(self) -> str:
        """The skopeo transport reference for this image, ``oci:DIR:TAG``."""
        return f"oci:{self.layout_dir}:{self.tag}"

    def manifest_for(self, platform: str) -> PlatformManifest:
        """The manifest for ``os/arch`` (variant optional); KeyError when absent."""
        for manifest in self.manifests:
            if platform in (manifest.platform, manifest.os_arch):
                return manifest
        raise KeyError(f"image has no platform {platform!r}; it has {self.platforms}")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json_bytes(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _payload(seed: str, size_bytes: int) -> bytes:
    """Deterministic incompressible bytes derived from ``seed``."""
    return random.Random(seed).randbytes(size_bytes)


def _split_platform(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


class _LayoutWriter:
    """Writes blobs into one OCI layout directory and returns their descriptors."""

    def __init__(self, layout_dir: Path) -> None:
        self.layout_dir = layout_dir
        self.blob_dir = layout_dir / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        (layout_dir / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))

    def blob(self, media_type: str, data: bytes) -> Descriptor:
        digest = _sha256(data)
        (self.blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
        return Descriptor(media_type=media_type, digest=digest, size_bytes=len(data))

    def index_json(self, top: Descriptor, tag: str) -> None:
        entry = top.as_json() | {"annotations": {REF_NAME_ANNOTATION: tag}}
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        (self.layout_dir / "index.json").write_bytes(_json_bytes(document))


def _tar_layer(files: Mapping[str, bytes], symlinks: Mapping[str, str], mode: int) -> bytes:
    """A gzip'd tar with fixed metadata; returns the compressed bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted(
            {str(Path(p).parent) for p in [*files, *symlinks] if str(Path(p).parent) != "."}
        )
        for directory in _with_parents(directories):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = _LAYER_MTIME
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = mode
            info.mtime = _LAYER_MTIME
            tar.addfile(info, io.BytesIO(files[path]))
        for path in sorted(symlinks):
            info = tarfile.TarInfo(path)
            info.type = tarfile.SYMTYPE
            info.linkname = symlinks[path]
            info.mode = 0o777
            info.mtime = _LAYER_MTIME
            tar.addfile(info)
    compressed = io.BytesIO()
    # mtime=0 and no file name keep the gzip header (and so the digest) reproducible.
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


def _with_parents(directories: Sequence[str]) -> list[str]:
    every: set[str] = set()
    for directory in directories:
        path = Path(directory)
        every.update(str(p) for p in [path, *path.parents] if str(p) != ".")
    return sorted(every)


class ImageFactory:
    """Builds :class:`OciImage` layouts under ``root``, one directory per image."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def build(
        self,
        *,
        platforms: Sequence[str] = ("linux/amd64",),
        layer_sizes: Sequence[int] = (4096,),
        busybox: bool = False,
        files: Mapping[str, bytes] | None = None,
        salt: str = "",
        index: bool | None = None,
        labels: Mapping[str, str] | None = None,
        tag: str = "latest",
    ) -> OciImage:
        """Write one image layout and describe it.

        ``platforms``: one entry gives a plain manifest unless ``index=True``; several give
        an OCI index. ``layer_sizes``: payload bytes per data layer (each layer holds one
        pseudo-random file under ``/data``). ``busybox``: add a bottom layer with the static
        busybox and ``/bin/sh``. ``files``: extra files (path -> bytes) in one more layer.
        ``salt``: makes digests distinct from an otherwise identical build.
        """
        if not platforms:
            raise ValueError("an image needs at least one platform")
        if busybox and not BUSYBOX_PATH.is_file():
            raise FileNotFoundError(
                f"{BUSYBOX_PATH} is missing: apt-get install busybox-static "
                "(scripts/install-deps.sh lists it)"
            )
        as_index = len(platforms) > 1 if index is None else index
        if not as_index and len(platforms) > 1:
            raise ValueError("several platforms need an index; leave index unset or True")
        self._count += 1
        layout_dir = self.root / f"image-{self._count}"
        writer = _LayoutWriter(layout_dir)
        all_labels = dict(labels or {}) | ({SALT_LABEL: salt} if salt else {})
        manifests = tuple(
            self._write_platform(
                writer, platform, layer_sizes, busybox, files or {}, salt, all_labels
            )
            for platform in platforms
        )
        if as_index:
            entries = []
            for manifest in manifests:
                os_name, arch, variant = _split_platform(manifest.platform)
                platform_json: dict[str, str] = {"architecture": arch, "os": os_name}
                if variant:
                    platform_json["variant"] = variant
                entries.append(
                    Descriptor(
                        OCI_MANIFEST, manifest.digest, manifest.manifest_size_bytes
                    ).as_json()
                    | {"platform": platform_json}
                )
            index_body = _json_bytes(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
            )
            top = writer.blob(OCI_INDEX, index_body)
        else:
            only = manifests[0]
            top = Descriptor(OCI_MANIFEST, only.digest, only.manifest_size_bytes)
        writer.index_json(top, tag)
        return OciImage(
            layout_dir=layout_dir,
            tag=tag,
            digest=top.digest,
            media_type=top.media_type,
            manifests=manifests,
            has_shell=busybox,
            salt=salt,
            labels=all_labels,
        )

    def _write_platform(
        self,
        writer: _LayoutWriter,
        platform: str,
        layer_sizes: Sequence[int],
        busybox: bool,
        files: Mapping[str, bytes],
        salt: str,
        labels: Mapping[str, str],
    ) -> PlatformManifest:
        os_name, arch, variant = _split_platform(platform)
        layer_blobs: list[bytes] = []
        if busybox:
            links = {f"bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS}
            layer_blobs.append(
                _tar_layer({"bin/busybox": BUSYBOX_PATH.read_bytes()}, links, mode=0o755)
            )
        for number, size in enumerate(layer_sizes):
            payload = _payload(f"{salt}|{platform}|{number}|{size}", size)
            layer_blobs.append(_tar_layer({f"data/layer-{number}.bin": payload}, {}, mode=0o644))
        if files or salt:
            extra = dict(files)
            if salt:
                extra["etc/imagewarden-salt"] = salt.encode()
            layer_blobs.append(
                _tar_layer({k.lstrip("/"): v for k, v in extra.items()}, {}, mode=0o644)
            )
        if not layer_blobs:
            raise ValueError("an image needs at least one layer (layer_sizes, busybox or files)")
        layers = tuple(writer.blob(OCI_LAYER_GZIP, blob) for blob in layer_blobs)
        diff_ids = [_sha256(gzip.decompress(blob)) for blob in layer_blobs]
        image_config: dict[str, object] = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": dict(labels),
        }
        if busybox:
            image_config["Cmd"] = ["/bin/sh"]
        config_json: dict[str, object] = {
            "architecture": arch,
            "os": os_name,
            "created": _CREATED,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if variant:
            config_json["variant"] = variant
        config = writer.blob(OCI_CONFIG, _json_bytes(config_json))
        manifest_body = _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.as_json(),
                "layers": [layer.as_json() for layer in layers],
            }
        )
        manifest = writer.blob(OCI_MANIFEST, manifest_body)
        return PlatformManifest(
            platform=platform,
            digest=manifest.digest,
            manifest_size_bytes=manifest.size_bytes,
            config=config,
            layers=layers,
        )

    def single(self, *, salt: str = "", layer_sizes: Sequence[int] = (4096,)) -> OciImage:
        """A linux/amd64 image with one small data layer."""
        return self.build(salt=salt, layer_sizes=layer_sizes)

    def multi_platform(self, *, salt: str = "", layer_sizes: Sequence[int] = (4096,)) -> OciImage:
        """An OCI index for linux/amd64 and linux/arm64 (variant v8)."""
        return self.build(
            platforms=("linux/amd64", "linux/arm64/v8"), salt=salt, layer_sizes=layer_sizes
        )

    def arm64_only(self, *, salt: str = "", index: bool = True) -> OciImage:
        """An image that exists only for linux/arm64 (as a one-entry index by default)."""
        return self.build(platforms=("linux/arm64/v8",), salt=salt, index=index)

    def with_busybox(
        self, *, salt: str = "", platforms: Sequence[str] = ("linux/amd64",)
    ) -> OciImage:
        """An image whose bottom layer has static busybox and ``/bin/sh`` (amd64 binary)."""
        return self.build(platforms=platforms, busybox=True, layer_sizes=(), salt=salt)

    def no_shell(self, *, salt: str = "") -> OciImage:
        """An image with data files only: no ``/bin/sh``, nothing that can run."""
        return self.build(layer_sizes=(2048,), files={"app/README": b"no shell here\n"}, salt=salt)
