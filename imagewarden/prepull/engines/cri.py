"""Pull through the Kubernetes CRI ImageService (runtime.v1) over the runtime's gRPC socket.

This is what the kubelet itself does on a node running containerd or CRI-O: ``PullImage``
with the registry credentials in ``AuthConfig`` (per request, nothing stored on the node),
``ImageStatus`` to see whether an image is present, ``ListImages`` to list what the node
holds and ``RemoveImage``. The client is generated from the CRI ``api.proto`` (see
``_cri/README.md`` for the upstream version) and uses ``grpc.aio``, so nothing blocks the
agent's event loop.

CRI pulls report no progress while they run: the agent shows an indeterminate bar and,
when the pull is done, reads the size from ``ImageStatus``. containerd's size counts every
blob it stored for the image: the manifest documents as well as the config and layers, so
:attr:`PullTarget.manifest_bytes` is subtracted to report compressed config plus layers,
the number the registry's manifests give. A pull that exceeds ``pull_timeout_seconds`` is
cancelled (the gRPC deadline cancels the runtime's pull too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from imagewarden.errors import EngineError, EngineUnavailableError, ImagePullError
from imagewarden.prepull.engines import (
    EngineKind,
    ProgressCallback,
    PullOutcome,
    PullTarget,
    classify_pull_error,
    foreign_names,
)
from imagewarden.prepull.engines._cri import api_pb2, api_pb2_grpc
from imagewarden.registry.manifest import MAX_MANIFEST_BYTES

__all__ = ["CriEngine", "stored_to_compressed_bytes"]

log = logging.getLogger(__name__)

QUICK_CALL_TIMEOUT_SECONDS = 30.0
"""ImageStatus, ListImages, RemoveImage: answered from the runtime's metadata store."""
MAX_MANIFEST_OVERHEAD_BYTES = 2 * MAX_MANIFEST_BYTES
"""An index plus one platform manifest, each at most distribution's 4 MiB cap."""
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""ListImages on a node with thousands of images exceeds gRPC's 4 MiB default."""


def stored_to_compressed_bytes(stored_bytes: int, target: PullTarget) -> tuple[int, bool]:
    """``(config plus layer bytes, exact)`` from the size a CRI runtime reports for an image.

    containerd sums every blob it stored for the image: the index and platform manifest
    documents too. With :attr:`PullTarget.manifest_bytes` known they are subtracted. Else,
    when the registry's compressed size explains the stored size up to at most two manifest
    documents (what an index plus one platform manifest can add), that size is the answer;
    anything else is reported as stored, flagged inexact.
    """
    if 0 < target.manifest_bytes < stored_bytes:
        return stored_bytes - target.manifest_bytes, True
    expected = target.expected_bytes
    if expected is not None and 0 <= stored_bytes - expected <= MAX_MANIFEST_OVERHEAD_BYTES:
        return expected, True
    return stored_bytes, False


def _grpc_target(address: str) -> str:
    """gRPC channel target for ``address`` (a socket path, ``unix://…`` or ``host:port``)."""
    if address.startswith("/"):
        return f"unix://{address}"
    return address


class CriEngine:
    """:class:`~imagewarden.prepull.engines.Engine` over CRI runtime.v1 ImageService."""

    kind = EngineKind.CRI

    def __init__(self, address: str, *, pull_timeout_seconds: float = 3600.0) -> None:
        self._address = address
        self._pull_timeout_seconds = pull_timeout_seconds
        self._channel: Any = None
        self._stub: Any = None

    @property
    def address(self) -> str:
        """The runtime's socket (``unix:///run/containerd/containerd.sock``)."""
        return self._address

    def _service(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                _grpc_target(self._address),
                options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)],
            )
            make_stub: Callable[[Any], Any] = api_pb2_grpc.ImageServiceStub  # generated, untyped
            self._stub = make_stub(self._channel)
        return self._stub

    def _error(self, error: grpc.aio.AioRpcError, action: str) -> EngineError:
        code = error.code()
        details = error.details() or str(code)
        if code == grpc.StatusCode.UNAVAILABLE:
            return EngineUnavailableError(
                f"the CRI runtime at {self._address} did not answer ({action}): {details}",
                engine=self.kind.value,
            )
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return EngineUnavailableError(
                f"the runtime at {self._address} does not serve CRI runtime.v1 ImageService "
                f"({action}): is containerd's CRI plugin enabled and containerd 1.5 or newer?",
                engine=self.kind.value,
            )
        return EngineError(f"{action} failed: {details}", engine=self.kind.value, temporary=True)

    async def version(self) -> str:
        # ImageService has no Version call; ListImages proves the service answers.
        try:
            reply = await self._service().ListImages(
                api_pb2.ListImagesRequest(), timeout=QUICK_CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            raise self._error(error, "ListImages") from error
        return f"CRI runtime.v1 at {self._address} ({len(reply.images)} images)"

    async def image_status(self, reference: str) -> api_pb2.Image | None:
        """The runtime's record of ``reference``, or ``None`` when it does not hold it."""
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=reference))
        try:
            reply = await self._service().ImageStatus(request, timeout=QUICK_CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(error, f"ImageStatus {reference}") from error
        if not reply.HasField("image") or not reply.image.id:
            return None
        image: api_pb2.Image = reply.image
        return image

    async def list_images(self) -> list[api_pb2.Image]:
        """Every image the runtime holds (in its CRI namespace)."""
        try:
            reply = await self._service().ListImages(
                api_pb2.ListImagesRequest(), timeout=QUICK_CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            raise self._error(error, "ListImages") from error
        return list(reply.images)

    async def has_image(self, target: PullTarget) -> bool:
        image = await self.image_status(target.pinned)
        return image is not None and target.pinned in image.repo_digests

    async def pull(self, target: PullTarget, on_progress: ProgressCallback) -> PullOutcome:
        on_progress(0, target.expected_bytes)
        auth = None
        if target.credentials is not None:
            username, password = target.credentials
            # No server_address: containerd would compare it with the endpoint it contacts
            # (a mirror from hosts.toml, registry-1.docker.io for docker.io) and drop the
            # credentials on a mismatch; the request is for this one image anyway.
            auth = api_pb2.AuthConfig(username=username, password=password)
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=target.pinned), auth=auth)
        try:
            reply = await self._service().PullImage(request, timeout=self._pull_timeout_seconds)
        except grpc.aio.AioRpcError as error:
            raise self._pull_error(error, target) from error
        image = await self.image_status(target.pinned)
        if image is None:
            raise ImagePullError(
                f"the runtime pulled {target.pinned} (image {reply.image_ref}) but does not "
                "report it in ImageStatus",
                engine=self.kind.value,
                reason="failed",
                temporary=True,
            )
        size = int(image.size)
        downloaded, exact = stored_to_compressed_bytes(size, target)
        on_progress(downloaded, downloaded)
        return PullOutcome(
            downloaded_bytes=downloaded, exact=exact, image_id=str(image.id), engine_size_bytes=size
        )

    def _pull_error(self, error: grpc.aio.AioRpcError, target: PullTarget) -> EngineError:
        code = error.code()
        details = error.details() or str(code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ImagePullError(
                f"pulling {target.pinned} took longer than {self._pull_timeout_seconds:g}s "
                "(is the registry answering?)",
                engine=self.kind.value,
                reason="timeout",
                temporary=True,
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
            return self._error(error, f"PullImage {target.pinned}")
        if code == grpc.StatusCode.NOT_FOUND:
            reason, temporary = "not_found", False
        else:
            reason, temporary = classify_pull_error(details)
        return ImagePullError(
            f"the runtime could not pull the image: {details}",
            engine=self.kind.value,
            reason=reason,
            temporary=temporary,
        )

    async def remove(self, target: PullTarget) -> bool:
        image = await self.image_status(target.pinned)
        if image is None:
            return True
        # RemoveImage deletes the image under every name: keep it if anyone else named it.
        others = foreign_names([*image.repo_tags, *image.repo_digests], target.pinned)
        if others:
            log.info("keeping %s: also known as %s", target.pinned, ", ".join(others))
            return False
        request = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=target.pinned))
        try:
            await self._service().RemoveImage(request, timeout=QUICK_CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise self._error(error, f"RemoveImage {target.pinned}") from error
        return True

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
