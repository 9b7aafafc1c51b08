"""containerd for tests: one daemon under a temp dir, and a CRI image client that talks to it.

:func:`start_containerd` runs Debian's ``containerd`` (1.6) as root with its ``root``,
``state``, socket, CNI and ``opt`` directories all under one base directory (nothing touches
``/var/lib/containerd`` or ``/etc``), and waits until its gRPC socket answers. Registries are
reached through a *hosts directory* (``DIR/HOST/hosts.toml``, containerd's ``config_path``):
:meth:`Containerd.add_registry` maps a registry host (``127.0.0.1:PORT``, or ``docker.io``
served by a local registry) to a plain-HTTP endpoint. Both the CRI plugin and
``ctr --hosts-dir`` read that directory on every pull, so registries may be added at any time.

:class:`CriImageClient` speaks the CRI ``runtime.v1.ImageService`` over gRPC (PullImage,
ImageStatus, ListImages, RemoveImage), the same calls a kubelet makes, so image references,
repo digests and sizes are exactly what a kubelet would see. The protobuf messages are a
wire-compatible subset of ``k8s.io/cri-api`` ``api.proto`` (same field numbers), built at import
time from descriptors: no generated code and no protoc.

:class:`CriImageRuntime` and :class:`CtrImageRuntime` are the two ways a simulated kubelet
(:mod:`tests.support.kubelet`) reaches its images: the CRI for the machine's own architecture,
``ctr images pull --platform`` for another one (the CRI plugin only pulls the host's platform).

The process is stopped by PID (:meth:`Containerd.stop`), and an ``atexit`` hook in
:mod:`tests.support.kube` stops any that a crashed session left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.support.kube import KubeStartError, ManagedProcess, free_port

CONTAINERD_BINARY = "containerd"
CTR_BINARY = "ctr"
CRI_NAMESPACE = "k8s.io"
"""containerd namespace the CRI plugin keeps its images in."""
READY_TIMEOUT_SECONDS = 20.0


class ContainerdUnavailableError(RuntimeError):
    """containerd or ctr is not installed; the message says how to install it."""


def require_containerd() -> tuple[str, str]:
    """Paths of ``containerd`` and ``ctr``; raises so a test FAILS when they are missing."""
    daemon, ctl = shutil.which(CONTAINERD_BINARY), shutil.which(CTR_BINARY)
    if daemon is None or ctl is None:
        raise ContainerdUnavailableError(
            "containerd/ctr not on PATH; run scripts/install-deps.sh (apt-get install containerd)"
        )
    return daemon, ctl


def hosts_toml(endpoint: str) -> str:
    """A ``hosts.toml`` sending every pull for a host to ``endpoint`` (``http://127.0.0.1:PORT``)."""
    return (
        f'server = "{endpoint}"\n\n'
        f'[host."{endpoint}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  skip_verify = true\n"
    )


def write_registry_host(hosts_dir: Path, host: str, endpoint: str) -> Path:
    """Write ``hosts_dir/HOST/hosts.toml`` mapping ``host`` to ``endpoint``; returns the file."""
    directory = hosts_dir / host
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.toml"
    path.write_text(hosts_toml(endpoint))
    return path


def containerd_config(base_dir: Path, socket_path: Path, hosts_dir: Path) -> str:
    """containerd 1.6 config (version 2) keeping every path under ``base_dir``."""
    stream_port = free_port()
    return f"""\
version = 2
root = "{base_dir / "root"}"
state = "{base_dir / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket_path}"

[ttrpc]
  address = "{socket_path}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base_dir / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{base_dir / "cni" / "bin"}"
  conf_dir = "{base_dir / "cni" / "conf"}"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts_dir}"
"""


@dataclass
class Containerd:
    """A running containerd whose every file lives under ``base_dir``."""

    base_dir: Path
    """Root of this daemon's directories."""
    hosts_dir: Path
    """Registry hosts directory (``config_path``); may be shared between daemons."""
    process: ManagedProcess
    """The daemon process."""

    @property
    def socket_path(self) -> Path:
        """gRPC socket (containerd API and CRI)."""
        return self.base_dir / "containerd.sock"

    @property
    def address(self) -> str:
        """gRPC target for ``grpc.aio.insecure_channel``."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """PID of the daemon."""
        return self.process.pid

    def add_registry(self, host: str, endpoint: str) -> Path:
        """Send pulls for ``host`` to ``endpoint`` (see :func:`write_registry_host`)."""
        return write_registry_host(self.hosts_dir, host, endpoint)

    def ctr(self, *args: str, timeout_seconds: float = 120.0) -> str:
        """Run ``ctr -a SOCKET -n k8s.io ARGS…`` and return stdout; raises on failure."""
        command = [CTR_BINARY, "-a", str(self.socket_path), "-n", CRI_NAMESPACE, *args]
        result = subprocess.run(command, capture_output=True, timeout=timeout_seconds, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def pull_with_ctr(
        self,
        reference: str,
        *,
        platform: str | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> str:
        """``ctr images pull`` through the hosts directory (``--user`` when credentials given)."""
        args = ["images", "pull", "--hosts-dir", str(self.hosts_dir)]
        if platform:
            args += ["--platform", platform]
        if credentials:
            args += ["--user", f"{credentials[0]}:{credentials[1]}"]
        return self.ctr(*args, reference)

    def image_client(self) -> CriImageClient:
        """A CRI image client on this daemon's socket (create it inside the event loop using it)."""
        return CriImageClient(self.address)

    def stop(self) -> None:
        """Stop the daemon by PID."""
        self.process.stop()

    def log_tail(self, lines: int = 25) -> str:
        """Last lines of the daemon's log."""
        return self.process.log_tail(lines)


def start_containerd(base_dir: Path, *, hosts_dir: Path | None = None) -> Containerd:
    """Start containerd under ``base_dir`` and wait until ``ctr version`` answers."""
    daemon, _ = require_containerd()
    base_dir.mkdir(parents=True, exist_ok=True)
    hosts_dir = hosts_dir or base_dir / "hosts"
    hosts_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("cni/bin", "cni/conf", "opt"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    socket_path = base_dir / "containerd.sock"
    config_path = base_dir / "config.toml"
    config_path.write_text(containerd_config(base_dir, socket_path, hosts_dir))
    process = ManagedProcess(
        "containerd",
        [daemon, "--config", str(config_path), "--log-level", "info"],
        base_dir / "containerd.log",
    )
    engine = Containerd(base_dir=base_dir, hosts_dir=hosts_dir, process=process)
    process.start()
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        process.check_alive()
        if socket_path.exists():
            try:
                engine.ctr("version", timeout_seconds=5)
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        if time.monotonic() > deadline:
            process.stop()
            raise KubeStartError(f"containerd not ready in time:\n{process.log_tail()}")
        time.sleep(0.05)
    return engine


# --- CRI image service ----------------------------------------------------------------------

_FIELD = descriptor_pb2.FieldDescriptorProto
_CRI_PACKAGE = "runtime.v1"
# (field name, number, type, message type name or None, repeated); numbers as in cri-api api.proto
_CRI_MESSAGES: dict[str, list[tuple[str, int, int, str | None, bool]]] = {
    "ImageSpec": [("image", 1, _FIELD.TYPE_STRING, None, False)],
    "AuthConfig": [
        ("username", 1, _FIELD.TYPE_STRING, None, False),
        ("password", 2, _FIELD.TYPE_STRING, None, False),
        ("auth", 3, _FIELD.TYPE_STRING, None, False),
        ("server_address", 4, _FIELD.TYPE_STRING, None, False),
        ("identity_token", 5, _FIELD.TYPE_STRING, None, False),
        ("registry_token", 6, _FIELD.TYPE_STRING, None, False),
    ],
    "Int64Value": [("value", 1, _FIELD.TYPE_INT64, None, False)],
    "Image": [
        ("id", 1, _FIELD.TYPE_STRING, None, False),
        ("repo_tags", 2, _FIELD.TYPE_STRING, None, True),
        ("repo_digests", 3, _FIELD.TYPE_STRING, None, True),
        ("size", 4, _FIELD.TYPE_UINT64, None, False),
        ("uid", 5, _FIELD.TYPE_MESSAGE, "Int64Value", False),
        ("username", 6, _FIELD.TYPE_STRING, None, False),
        ("spec", 7, _FIELD.TYPE_MESSAGE, "ImageSpec", False),
    ],
    "PullImageRequest": [
        ("image", 1, _FIELD.TYPE_MESSAGE, "ImageSpec", False),
        ("auth", 2, _FIELD.TYPE_MESSAGE, "AuthConfig", False),
    ],
    "PullImageResponse": [("image_ref", 1, _FIELD.TYPE_STRING, None, False)],
    "ImageFilter": [("image", 1, _FIELD.TYPE_MESSAGE, "ImageSpec", False)],
    "ListImagesRequest": [("filter", 1, _FIELD.TYPE_MESSAGE, "ImageFilter", False)],
    "ListImagesResponse": [("images", 1, _FIELD.TYPE_MESSAGE, "Image", True)],
    "ImageStatusRequest": [
        ("image", 1, _FIELD.TYPE_MESSAGE, "ImageSpec", False),
        ("verbose", 2, _FIELD.TYPE_BOOL, None, False),
    ],
    "ImageStatusResponse": [("image", 1, _FIELD.TYPE_MESSAGE, "Image", False)],
    "RemoveImageRequest": [("image", 1, _FIELD.TYPE_MESSAGE, "ImageSpec", False)],
    "RemoveImageResponse": [],
}


def _build_cri_messages() -> dict[str, Any]:
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="imagewarden_test_cri_subset.proto", package=_CRI_PACKAGE, syntax="proto3"
    )
    for message_name, fields in _CRI_MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, field_type, type_name, repeated in fields:
            message.field.add(
                name=name,
                number=number,
                type=field_type,
                type_name=f".{_CRI_PACKAGE}.{type_name}" if type_name else None,
                label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_CRI_PACKAGE}.{name}"))
        for name in _CRI_MESSAGES
    }


_CRI = _build_cri_messages()


@dataclass(frozen=True)
class CriImage:
    """One image as the CRI reports it (what a kubelet copies into ``node.status.images``)."""

    id: str
    """Image ID: ``sha256:`` digest of the image config."""
    repo_tags: tuple[str, ...]
    """``name:tag`` references."""
    repo_digests: tuple[str, ...]
    """``name@sha256:…`` references (digest of the manifest or index that was pulled)."""
    size_bytes: int
    """Size the runtime reports (compressed content of the pulled platform)."""

    @property
    def names(self) -> list[str]:
        """Names as a kubelet puts them in node status: repo digests, then repo tags."""
        return [*self.repo_digests, *self.repo_tags]


def _image_from_message(message: Any) -> CriImage:
    return CriImage(
        id=message.id,
        repo_tags=tuple(message.repo_tags),
        repo_digests=tuple(message.repo_digests),
        size_bytes=int(message.size),
    )


@dataclass
class CriImageClient:
    """Async client of the CRI ``runtime.v1.ImageService`` on a containerd socket."""

    address: str
    """``unix:///path/containerd.sock``."""
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)

    def _call(self, method: str, request_type: str, response_type: str) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return self._channel.unary_unary(
            f"/{_CRI_PACKAGE}.ImageService/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=_CRI[response_type].FromString,
        )

    async def pull(self, image: str, *, credentials: tuple[str, str] | None = None) -> str:
        """PullImage; returns the image reference containerd reports (the image ID).

        Raises ``grpc.aio.AioRpcError`` with containerd's message when the pull fails.
        """
        request = _CRI["PullImageRequest"](image=_CRI["ImageSpec"](image=image))
        if credentials is not None:
            request.auth.CopyFrom(
                _CRI["AuthConfig"](username=credentials[0], password=credentials[1])
            )
        response = await self._call("PullImage", "PullImageRequest", "PullImageResponse")(request)
        return str(response.image_ref)

    async def status(self, image: str) -> CriImage | None:
        """ImageStatus: the image known under ``image`` (any ref or ID), None if absent."""
        request = _CRI["ImageStatusRequest"](image=_CRI["ImageSpec"](image=image))
        response = await self._call("ImageStatus", "ImageStatusRequest", "ImageStatusResponse")(
            request
        )
        return _image_from_message(response.image) if response.HasField("image") else None

    async def list(self) -> list[CriImage]:
        """ListImages: every image the runtime holds."""
        response = await self._call("ListImages", "ListImagesRequest", "ListImagesResponse")(
            _CRI["ListImagesRequest"]()
        )
        return [_image_from_message(image) for image in response.images]

    async def remove(self, image: str) -> None:
        """RemoveImage (a no-op when absent)."""
        request = _CRI["RemoveImageRequest"](image=_CRI["ImageSpec"](image=image))
        await self._call("RemoveImage", "RemoveImageRequest", "RemoveImageResponse")(request)

    async def close(self) -> None:
        """Close the gRPC channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


async def wait_for_cri(engine: Containerd, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
    """Wait until the CRI plugin answers ListImages (it starts a moment after the socket)."""
    cri = engine.image_client()
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            engine.process.check_alive()
            try:
                await cri.list()
                return
            except grpc.aio.AioRpcError as error:
                if time.monotonic() > deadline:
                    raise KubeStartError(
                        f"containerd CRI not serving ({error.details()}):\n{engine.log_tail()}"
                    ) from error
            await asyncio.sleep(0.05)
    finally:
        await cri.close()


def image_domain(reference: str) -> str:
    """The registry host of an image reference, as docker's ``splitDockerDomain`` decides."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return "docker.io" if first == "index.docker.io" else first
    return "docker.io"


# --- image runtimes as a kubelet sees them ----------------------------------------------


class ImagePullError(Exception):
    """The runtime could not pull an image; the message is what the kubelet would report."""


class ImageRuntime(Protocol):
    """The image half of a container runtime, as a kubelet uses it."""

    async def pull(self, image: str, credentials: tuple[str, str] | None) -> str:
        """Pull ``image``; returns the image ID. Raises :class:`ImagePullError`."""
        ...

    async def status(self, image: str) -> CriImage | None:
        """The image known under ``image``, None when absent."""
        ...

    async def list(self) -> list[CriImage]:
        """Every image held."""
        ...

    async def remove(self, image: str) -> None:
        """Delete the image known under ``image`` (all its names), as image GC would."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _grpc_error_text(error: grpc.aio.AioRpcError) -> str:
    """Format like Go's status errors: ``rpc error: code = NotFound desc = …``."""
    code_name = "".join(part.capitalize() for part in error.code().name.split("_"))
    return f"rpc error: code = {code_name} desc = {error.details()}"


class CriImageRuntime:
    """Images through the CRI ImageService: exactly what a kubelet on this machine does."""

    def __init__(self, engine: Containerd) -> None:
        self._client: CriImageClient = engine.image_client()

    async def pull(self, image: str, credentials: tuple[str, str] | None) -> str:
        try:
            return await self._client.pull(image, credentials=credentials)
        except grpc.aio.AioRpcError as error:
            raise ImagePullError(_grpc_error_text(error)) from error

    async def status(self, image: str) -> CriImage | None:
        return await self._client.status(image)

    async def list(self) -> list[CriImage]:
        return await self._client.list()

    async def remove(self, image: str) -> None:
        await self._client.remove(image)

    async def close(self) -> None:
        await self._client.close()


class CtrImageRuntime:
    """Images for a foreign architecture through ``ctr images pull --platform``.

    The CRI plugin only pulls the host's platform, so an arm64 node on an amd64 machine pulls
    with ctr and builds the CRI's view itself: a pulled tag also gets a ``name@digest`` ref (as
    the CRI records it), images are grouped by config digest, and the size is the sum of the
    index, platform manifest, config and layer descriptors (what containerd's ``Image.Size``
    reports through the CRI).
    """

    def __init__(self, engine: Containerd, architecture: str) -> None:
        self._engine = engine
        self._platform = f"linux/{architecture}"
        self._architecture = architecture
        self._blob_cache: dict[str, bytes] = {}

    async def _ctr(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "ctr",
            "-a",
            str(self._engine.socket_path),
            "-n",
            CRI_NAMESPACE,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        if process.returncode != 0:
            message = stderr.decode(errors="replace").strip().splitlines()
            raise ImagePullError(message[-1].removeprefix("ctr: ") if message else "ctr failed")
        return stdout.decode(errors="replace")

    async def _records(self) -> dict[str, str]:
        """ref -> target digest of every image record."""
        records = {}
        for line in (await self._ctr("images", "ls")).splitlines()[1:]:
            columns = line.split()
            if len(columns) >= 3:
                records[columns[0]] = columns[2]
        return records

    async def _blob(self, digest: str) -> bytes:
        if digest not in self._blob_cache:
            process = await asyncio.create_subprocess_exec(
                "ctr",
                "-a",
                str(self._engine.socket_path),
                "-n",
                CRI_NAMESPACE,
                "content",
                "get",
                digest,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await process.communicate()
            if process.returncode != 0:
                raise ImagePullError(stderr.decode(errors="replace").strip())
            self._blob_cache[digest] = stdout
        return self._blob_cache[digest]

    async def _describe(self, target: str) -> tuple[str, int]:
        """(config digest, size) of the image whose top-level manifest is ``target``."""
        document = json.loads(await self._blob(target))
        size = len(await self._blob(target))
        if "manifests" in document:
            chosen = next(
                (
                    entry
                    for entry in document["manifests"]
                    if entry.get("platform", {}).get("architecture") == self._architecture
                    and entry.get("platform", {}).get("os", "linux") == "linux"
                ),
                None,
            )
            if chosen is None:
                raise ImagePullError(f"no match for platform {self._platform} in {target}")
            size += int(chosen["size"])
            document = json.loads(await self._blob(chosen["digest"]))
        config = document["config"]
        size += int(config["size"]) + sum(int(layer["size"]) for layer in document["layers"])
        return str(config["digest"]), size

    async def pull(self, image: str, credentials: tuple[str, str] | None) -> str:
        args = ["images", "pull", "--hosts-dir", str(self._engine.hosts_dir)]
        args += ["--platform", self._platform]
        if credentials is not None:
            args += ["--user", f"{credentials[0]}:{credentials[1]}"]
        try:
            await self._ctr(*args, image)
        except ImagePullError as error:
            # The CRI answers NotFound for a missing reference and Unknown for the rest.
            code = "NotFound" if str(error).endswith(": not found") else "Unknown"
            raise ImagePullError(
                f'rpc error: code = {code} desc = failed to pull and unpack image "{image}": '
                f"{error}"
            ) from error
        target = (await self._records())[fully_qualified(image)]
        if "@" not in image:
            name = fully_qualified(image).rsplit(":", 1)[0]
            with contextlib.suppress(ImagePullError):  # already tagged by an earlier pull
                await self._ctr("images", "tag", fully_qualified(image), f"{name}@{target}")
        config_digest, _ = await self._describe(target)
        return config_digest

    async def list(self) -> list[CriImage]:
        grouped: dict[str, tuple[list[str], list[str], int]] = {}
        for ref, target in (await self._records()).items():
            try:
                config_digest, size = await self._describe(target)
            except (ImagePullError, KeyError, json.JSONDecodeError):
                continue
            tags, digests, _ = grouped.setdefault(config_digest, ([], [], size))
            if ref.startswith("sha256:"):
                continue
            (digests if "@" in ref else tags).append(ref)
        return [
            CriImage(
                id=image_id,
                repo_tags=tuple(sorted(tags)),
                repo_digests=tuple(sorted(digests)),
                size_bytes=size,
            )
            for image_id, (tags, digests, size) in grouped.items()
        ]

    async def status(self, image: str) -> CriImage | None:
        wanted = fully_qualified(image) if not image.startswith("sha256:") else image
        for candidate in await self.list():
            if wanted == candidate.id or wanted in candidate.names:
                return candidate
        return None

    async def remove(self, image: str) -> None:
        found = await self.status(image)
        if found is None:
            return
        config_digest = found.id
        refs = [
            ref
            for ref, target in (await self._records()).items()
            if ref in found.names or (await self._describe(target))[0] == config_digest
        ]
        if refs:
            await self._ctr("images", "rm", *refs)

    async def close(self) -> None:
        self._blob_cache.clear()


def fully_qualified(image: str) -> str:
    """``ubuntu`` -> ``docker.io/library/ubuntu:latest``, as containerd names image records."""
    domain = image_domain(image)
    remainder = image if image.split("/", 1)[0] != domain else image.split("/", 1)[1]
    if image.startswith("index.docker.io/"):
        remainder = image.split("/", 1)[1]
    if domain == "docker.io" and "/" not in remainder.split("@")[0].split(":")[0]:
        remainder = f"library/{remainder}"
    last = remainder.rsplit("/", 1)[-1]
    if "@" not in remainder and ":" not in last:
        remainder += ":latest"
    return f"{domain}/{remainder}"
