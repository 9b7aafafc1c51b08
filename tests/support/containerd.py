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

The process is stopped by PID (:meth:`Containerd.stop`), and an ``atexit`` hook in
:mod:`tests.support.kube` stops any that a crashed session left.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
