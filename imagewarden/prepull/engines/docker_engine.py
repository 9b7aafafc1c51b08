"""Pull through the Docker Engine API (dockerd, or podman's compatible service).

The ``docker`` package is synchronous, so every call runs in a bounded thread pool owned by
the engine (``max_parallel_pulls`` pulls plus two threads for quick calls such as inspect):
the agent's event loop never waits on a socket. A pull is ``POST /images/create`` with the
registry credentials in ``X-Registry-Auth`` for this request only, and its response is a
stream of JSON progress messages, one object per blob event:

    {"status": "Pulling fs layer", "id": "e5afba607d7a", "progressDetail": {}}
    {"status": "Downloading", "id": "e5afba607d7a",
     "progressDetail": {"current": 89193224, "total": 150045950}}
    {"status": "Download complete", "id": "e5afba607d7a", "progressDetail": {}}
    {"error": "...", "errorDetail": {"message": "..."}}

:class:`PullProgressTracker` folds these into bytes per blob (the ``id`` is the first 12 hex
digits of the blob digest). dockerd reports byte counts continuously; podman only once a second
per blob, so a blob that completes faster never carries a count. The final count is still exact:
when no blob was already on the node, everything the manifest lists was downloaded, which is the
registry's compressed size (:attr:`PullTarget.size_bytes`); per-blob sizes from the manifest
(:attr:`PullTarget.blob_sizes`) also fill in blobs without counts. Only a pull that reused some
layers and left others uncounted reports a lower bound (``PullOutcome.exact`` is False).

The stream is read with a socket timeout of ``stall_timeout_seconds``: a registry that stops
sending makes the engine stop sending progress, and the pull fails as ``stalled``
(temporary). An overall ``pull_timeout_seconds`` and cancellation shut the socket down so the
worker thread returns at once and the engine cancels its side of the pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import docker.auth
import docker.errors
import requests

import docker
from imagewarden.errors import EngineError, EngineUnavailableError, ImagePullError
from imagewarden.prepull.engines import (
    BlobProgress,
    EngineKind,
    ProgressCallback,
    PullOutcome,
    PullTarget,
    classify_pull_error,
    foreign_names,
)

__all__ = ["DockerEngine", "PullProgressTracker"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SHORT_ID_CHARS = 12
"""Length of the blob id in progress messages (hex digits of the digest)."""
CONNECT_TIMEOUT_SECONDS = 10.0
"""Connecting to a local socket takes milliseconds; more means the engine is wedged."""
QUICK_CALL_TIMEOUT_SECONDS = 60.0
"""Inspect, remove and version calls; podman may hold its storage lock during a commit."""
PROGRESS_INTERVAL_SECONDS = 0.1
"""At most this often a pull's progress is passed on (dockerd sends hundreds per second)."""
_READ_CHUNK_BYTES = 64 * 1024


class PullProgressTracker:
    """Folds Docker API pull messages into downloaded and total bytes (no I/O).

    ``blob_sizes`` maps full digests to compressed sizes from the manifest; a blob reported
    complete without a byte count takes its size from there.
    """

    def __init__(self, blob_sizes: Mapping[str, int] | None = None) -> None:
        self._sizes_by_short_id = {
            digest.partition(":")[2][:SHORT_ID_CHARS]: size
            for digest, size in (blob_sizes or {}).items()
        }
        self.blobs: dict[str, BlobProgress] = {}
        """Progress per short blob id, in the order the engine first mentioned them."""

    def _blob(self, short_id: str) -> BlobProgress:
        blob = self.blobs.get(short_id)
        if blob is None:
            blob = BlobProgress(total_bytes=self._sizes_by_short_id.get(short_id))
            self.blobs[short_id] = blob
        return blob

    def feed(self, message: Mapping[str, Any]) -> None:
        """Apply one progress message; raise :class:`ImagePullError` for an error message."""
        error = message.get("error")
        if error is not None or message.get("errorDetail"):
            detail = message.get("errorDetail") or {}
            text = str(error or (detail.get("message") if isinstance(detail, dict) else "") or "")
            reason, temporary = classify_pull_error(text)
            raise ImagePullError(
                f"the engine could not pull the image: {text}",
                engine=EngineKind.DOCKER.value,
                reason=reason,
                temporary=temporary,
            )
        short_id = message.get("id")
        status = str(message.get("status", ""))
        if not isinstance(short_id, str) or len(short_id) != SHORT_ID_CHARS:
            return  # image-level lines ("Pulling from …", "Digest: …", "Status: …")
        blob = self._blob(short_id)
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, dict):
            current, total = detail.get("current"), detail.get("total")
            if isinstance(total, int) and total > 0:
                blob.total_bytes = total
            if isinstance(current, int):
                blob.done_bytes = max(blob.done_bytes, current)
            blob.state = "downloading"
        elif status in ("Verifying Checksum", "Download complete"):
            self._finish(blob, "downloaded")
        elif status == "Pull complete":
            self._finish(blob, "complete")
        elif status == "Already exists":
            blob.state = "skipped"
            blob.done_bytes = 0
        elif status in ("Pulling fs layer", "Waiting") and blob.state == "waiting":
            blob.state = "waiting"

    @staticmethod
    def _finish(blob: BlobProgress, state: str) -> None:
        if blob.state == "skipped":
            return
        if blob.total_bytes is not None:
            blob.done_bytes = blob.total_bytes
        if blob.state != "complete":
            blob.state = state

    @property
    def downloaded_bytes(self) -> int:
        """Bytes downloaded over every blob that was not already on the node."""
        return sum(blob.done_bytes for blob in self.blobs.values() if blob.state != "skipped")

    @property
    def total_bytes(self) -> int | None:
        """Bytes this pull has to download, once every blob's size is known."""
        wanted = [blob for blob in self.blobs.values() if blob.state != "skipped"]
        if not wanted or any(blob.total_bytes is None for blob in wanted):
            return None
        return sum(blob.total_bytes or 0 for blob in wanted)

    def final_bytes(self, expected_bytes: int | None) -> tuple[int, bool]:
        """``(downloaded_bytes, exact)`` once the stream ended without an error.

        Exact when every downloaded blob's size is known (from the engine or the manifest),
        or when no blob was already present, so that everything the manifest lists was
        downloaded: then the total is the manifest's compressed size ``expected_bytes``.
        Otherwise the bytes counted so far are a lower bound.
        """
        wanted = [blob for blob in self.blobs.values() if blob.state != "skipped"]
        if wanted and all(blob.total_bytes is not None for blob in wanted):
            return sum(blob.total_bytes or 0 for blob in wanted), True
        if expected_bytes is not None and self.skipped_blobs == 0:
            return expected_bytes, True
        return self.downloaded_bytes, False

    @property
    def skipped_blobs(self) -> int:
        """Blobs the engine already had."""
        return sum(1 for blob in self.blobs.values() if blob.state == "skipped")


def _iter_json_messages(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Decode a stream of concatenated JSON objects (newline-separated or not)."""
    decoder = json.JSONDecoder()
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode("utf-8", errors="replace")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                value, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                break  # an object split across chunks: wait for more
            buffer = buffer[end:]
            if isinstance(value, dict):
                yield value
    if buffer.strip():
        raise ImagePullError(
            f"the engine's pull stream ended inside a message: {buffer[:200]!r}",
            engine=EngineKind.DOCKER.value,
            reason="failed",
            temporary=True,
        )


def _other_names(inspected: Mapping[str, Any], pinned: str) -> list[str]:
    """Names of an inspected image that someone other than the agent may have given it."""
    names = [
        str(name)
        for name in [*(inspected.get("RepoTags") or []), *(inspected.get("RepoDigests") or [])]
        if name and "<none>" not in str(name)
    ]
    return foreign_names(names, pinned)


class _PullCall:
    """One streaming pull in a worker thread; :meth:`abort` wakes it from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self.aborted = False

    def attach(self, response: requests.Response) -> None:
        with self._lock:
            self._response = response
            if self.aborted:
                self._shutdown(response)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._response is not None:
                self._shutdown(self._response)

    @staticmethod
    def _shutdown(response: requests.Response) -> None:
        # close() alone does not wake a thread blocked in recv(); shutting the socket does,
        # and the engine sees the client go away and cancels its side of the pull.
        connection = getattr(response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            response.close()


class DockerEngine:
    """:class:`~imagewarden.prepull.engines.Engine` over the Docker Engine API."""

    kind = EngineKind.DOCKER

    def __init__(
        self,
        address: str,
        *,
        max_parallel_pulls: int = 2,
        stall_timeout_seconds: float = 120.0,
        pull_timeout_seconds: float = 3600.0,
    ) -> None:
        if max_parallel_pulls < 1:
            raise ValueError("max_parallel_pulls must be at least 1")
        self._address = address
        self._stall_timeout_seconds = stall_timeout_seconds
        self._pull_timeout_seconds = pull_timeout_seconds
        self._executor = ThreadPoolExecutor(
            max_workers=max_parallel_pulls + 2, thread_name_prefix="imagewarden-docker"
        )
        self._api: docker.APIClient | None = None
        self._api_lock = threading.Lock()
        self._calls: set[_PullCall] = set()

    @property
    def address(self) -> str:
        """The engine's URL (``unix:///var/run/docker.sock``, ``tcp://…``)."""
        return self._address

    # -- plumbing --------------------------------------------------------------------

    def _client(self) -> docker.APIClient:
        with self._api_lock:
            if self._api is None:
                try:
                    self._api = docker.APIClient(
                        base_url=self._address,
                        version="auto",
                        timeout=int(QUICK_CALL_TIMEOUT_SECONDS),
                    )
                except docker.errors.DockerException as error:
                    raise EngineUnavailableError(
                        f"cannot reach the Docker API at {self._address}: {error}",
                        engine=self.kind.value,
                    ) from error
            return self._api

    async def _run(self, function: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function)

    def _unavailable(self, error: Exception) -> EngineUnavailableError:
        return EngineUnavailableError(
            f"the Docker API at {self._address} did not answer: {error}", engine=self.kind.value
        )

    # -- Engine ----------------------------------------------------------------------

    async def version(self) -> str:
        def call() -> str:
            try:
                info = self._client().version()
            except (requests.exceptions.RequestException, docker.errors.DockerException) as error:
                raise self._unavailable(error) from error
            components = info.get("Components") or [{}]
            name = components[0].get("Name") if isinstance(components[0], dict) else None
            version = info.get("Version", "?")
            return f"{name or 'Docker Engine'} {version} (API {info.get('ApiVersion', '?')})"

        return await self._run(call)

    def _inspect(self, reference: str) -> dict[str, Any] | None:
        try:
            inspect: Callable[[str], dict[str, Any]] = self._client().inspect_image
            result = inspect(reference)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as error:
            if error.status_code == 404:
                return None
            raise EngineError(
                f"inspecting {reference} failed: {error.explanation or error}",
                engine=self.kind.value,
                temporary=True,
            ) from error
        except requests.exceptions.RequestException as error:
            raise self._unavailable(error) from error
        return result

    async def has_image(self, target: PullTarget) -> bool:
        found = await self._run(partial(self._inspect, target.pinned))
        return found is not None

    async def pull(self, target: PullTarget, on_progress: ProgressCallback) -> PullOutcome:
        loop = asyncio.get_running_loop()
        call = _PullCall()
        tracker = PullProgressTracker(target.blob_sizes)
        last_sent = [0.0]

        def report(force: bool = False) -> None:
            now = time.monotonic()
            if force or now - last_sent[0] >= PROGRESS_INTERVAL_SECONDS:
                last_sent[0] = now
                total = tracker.total_bytes or target.expected_bytes
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody is watching
                    loop.call_soon_threadsafe(on_progress, tracker.downloaded_bytes, total)

        def work() -> None:
            for message in self._pull_stream(target, call):
                tracker.feed(message)
                report()

        self._calls.add(call)
        future = loop.run_in_executor(self._executor, work)
        try:
            await asyncio.wait_for(asyncio.shield(future), self._pull_timeout_seconds)
        except TimeoutError:
            call.abort()
            with contextlib.suppress(Exception):
                await future
            raise ImagePullError(
                f"pulling {target.pinned} took longer than {self._pull_timeout_seconds:g}s",
                engine=self.kind.value,
                reason="timeout",
                temporary=True,
            ) from None
        except asyncio.CancelledError:
            call.abort()
            raise
        finally:
            self._calls.discard(call)
        found = await self._run(partial(self._inspect, target.pinned))
        if found is None:
            raise ImagePullError(
                f"the engine finished pulling {target.pinned} but does not hold it",
                engine=self.kind.value,
                reason="failed",
                temporary=True,
            )
        downloaded, exact = tracker.final_bytes(target.expected_bytes)
        on_progress(downloaded, downloaded)
        return PullOutcome(
            downloaded_bytes=downloaded,
            exact=exact,
            skipped_blobs=tracker.skipped_blobs,
            image_id=str(found.get("Id", "")),
        )

    def _pull_stream(self, target: PullTarget, call: _PullCall) -> Iterator[dict[str, Any]]:
        """``POST /images/create`` for ``target``; yields its progress messages."""
        api = self._client()
        headers: dict[str, str | bytes] = {}
        if target.credentials is not None:
            username, password = target.credentials
            headers["X-Registry-Auth"] = docker.auth.encode_header(
                {"username": username, "password": password, "serveraddress": target.registry_host}
            )
        params = {"fromImage": target.name, "tag": target.digest, "platform": target.platform}
        url = f"{api.base_url}/v{api.api_version}/images/create"
        try:
            response = api.post(
                url,
                params=params,
                headers=headers,
                stream=True,
                timeout=(CONNECT_TIMEOUT_SECONDS, self._stall_timeout_seconds),
            )
        except requests.exceptions.RequestException as error:
            raise self._unavailable(error) from error
        call.attach(response)
        with contextlib.closing(response):
            if response.status_code >= 400:
                text = response.text
                with contextlib.suppress(ValueError):
                    text = str(json.loads(text).get("message", text))
                reason, temporary = classify_pull_error(f"status {response.status_code} {text}")
                raise ImagePullError(
                    f"the engine refused to pull {target.pinned}: {text.strip()}",
                    engine=self.kind.value,
                    reason=reason,
                    temporary=temporary,
                )
            try:
                yield from _iter_json_messages(response.iter_content(_READ_CHUNK_BYTES))
            except requests.exceptions.RequestException as error:
                if call.aborted:
                    raise ImagePullError(
                        f"pulling {target.pinned} was stopped",
                        engine=self.kind.value,
                        reason="cancelled",
                        temporary=True,
                    ) from error
                raise ImagePullError(
                    f"pulling {target.pinned} stalled: the engine reported no progress for "
                    f"{self._stall_timeout_seconds:g}s (is the registry answering?)",
                    engine=self.kind.value,
                    reason="stalled",
                    temporary=True,
                ) from error

    async def remove(self, target: PullTarget) -> bool:
        def call() -> bool:
            found = self._inspect(target.pinned)
            if found is None:
                return True
            others = _other_names(found, target.pinned)
            if others:
                log.info("keeping %s: also known as %s", target.pinned, ", ".join(others))
                return False
            try:
                self._client().remove_image(target.pinned, force=False, noprune=False)
            except docker.errors.ImageNotFound:
                return True
            except docker.errors.APIError as error:
                if error.status_code == 404:
                    return True
                raise EngineError(
                    f"removing {target.pinned} failed: {error.explanation or error}",
                    engine=self.kind.value,
                    temporary=error.status_code != 409,  # 409: a container uses it
                ) from error
            except requests.exceptions.RequestException as error:
                raise self._unavailable(error) from error
            return True

        return await self._run(call)

    async def close(self) -> None:
        for call in list(self._calls):
            call.abort()
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._api_lock:
            if self._api is not None:
                self._api.close()
                self._api = None
