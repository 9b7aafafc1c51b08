"""A fault-injecting HTTP/1.1 proxy for registry tests, and listening decoys that count.

:class:`FaultProxy` listens on a free loopback port (IPv4 or IPv6, optionally TLS with a
self-signed certificate from :func:`self_signed_context`) and forwards each request to an
upstream (the real ``docker-registry``) over a fresh connection, unless a :class:`FaultPlan`
says otherwise:

=====================  ==================================================================
``PASS``               forward untouched
``STATUS``             answer ``status`` (500/502/503/429 …) with a registry error body;
                       ``retry_after_seconds`` adds ``Retry-After``
``RESET_BEFORE``       read the request, then reset the connection (RST) without an answer
``RESET_MID_BODY``     forward the status line, headers and half the body, then RST
``SLOW_BODY``          forward the headers, then the body at ``bytes_per_second``
``HANG``               read the request and never answer
``GARBAGE``            answer bytes that are not HTTP, then close
``REDIRECT``           answer 307 to ``redirect_to`` + the original path and query
=====================  ==================================================================

A plan applies to requests whose method is in ``methods``, whose path contains
``path_contains`` (and that carry the header ``with_header``, when set), for the next ``count``
of them (``None``: until the plan is cleared).
:meth:`FaultProxy.refuse_connections` closes the listening socket so connects are refused
(and :meth:`FaultProxy.accept_connections` re-opens the same port).

With ``upstream=None`` the proxy is a *decoy*: it answers every request ``404 NAME_UNKNOWN``.
Either way it counts accepted TCP connections (:attr:`FaultProxy.accepted`) and records every
request head it could parse (:attr:`FaultProxy.requests`, with headers), which is how tests
prove that a connection was, or was never, made. It runs its own event loop in a daemon
thread, so sync and async tests use it alike; :meth:`FaultProxy.stop` joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import ipaddress
import json
import socket
import ssl
import struct
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.background import BackgroundLoop

MAX_HEAD_BYTES = 64 * 1024
"""Request and response heads larger than this are cut off (no registry sends one)."""
UPSTREAM_TIMEOUT_SECONDS = 30.0


class FaultKind(enum.Enum):
    """What the proxy does with a request a plan matches."""

    PASS = "pass"
    STATUS = "status"
    RESET_BEFORE = "reset_before"
    RESET_MID_BODY = "reset_mid_body"
    SLOW_BODY = "slow_body"
    HANG = "hang"
    REDIRECT = "redirect"
    GARBAGE = "garbage"


@dataclass
class FaultPlan:
    """One fault and which requests it hits."""

    kind: FaultKind
    status: int = 503
    """For ``STATUS``."""
    retry_after_seconds: int | None = None
    """For ``STATUS``: sent as ``Retry-After`` (429 storms)."""
    bytes_per_second: float = 1.0
    """For ``SLOW_BODY``."""
    redirect_to: str = ""
    """For ``REDIRECT``: an origin such as ``http://127.0.0.1:5001``."""
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    path_contains: str = "/manifests/"
    with_header: str = ""
    """Only requests carrying this header (lower-case name, e.g. ``authorization``)."""
    count: int | None = None
    """How many matching requests the fault hits; None for all until cleared."""
    hits: int = 0
    """How many requests it has hit so far."""

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if method not in self.methods or self.path_contains not in path:
            return False
        if self.with_header and self.with_header not in headers:
            return False
        return self.count is None or self.hits < self.count


@dataclass(frozen=True)
class SeenRequest:
    """One request head the proxy read."""

    method: str
    path: str
    """Request target as sent (path and query)."""
    headers: dict[str, str]
    """Header names lower-cased."""
    fault: FaultKind
    """What the proxy did with it."""


@dataclass
class _Head:
    first_line: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def encode(self) -> bytes:
        lines = [self.first_line, *(f"{key}: {value}" for key, value in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    head = _Head(lines[0])
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            head.headers.append((key.strip(), value.strip()))
    return head


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close so the peer sees ECONNRESET (SO_LINGER 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _status_response(
    status: int, *, head_only: bool = False, extra: dict[str, str] | None = None
) -> bytes:
    codes = {429: "TOOMANYREQUESTS", 404: "NAME_UNKNOWN"}
    error = {"code": codes.get(status, "UNAVAILABLE"), "message": "injected by the fault proxy"}
    body = json.dumps({"errors": [error]}).encode()
    head = _Head(
        f"HTTP/1.1 {status} Injected",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *(extra or {}).items(),
        ],
    )
    return head.encode() + (b"" if head_only else body)


class FaultProxy:
    """An HTTP proxy (or decoy) on loopback that injects faults and counts what it sees."""

    def __init__(
        self,
        upstream: tuple[str, int] | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        name: str = "fault-proxy",
    ) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port
        self.tls = tls
        self.name = name
        self.plan = FaultPlan(FaultKind.PASS)
        self.accepted = 0
        """TCP connections accepted since start (or :meth:`reset_counts`)."""
        self.handshakes = 0
        """TLS handshakes that succeeded (a client that distrusts the certificate fails it)."""
        self.requests: list[SeenRequest] = []
        self._background = BackgroundLoop(name)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._hang = asyncio.Event()

    # -- addresses -----------------------------------------------------------------------

    @property
    def netloc(self) -> str:
        """``127.0.0.1:PORT`` or ``[::1]:PORT``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind (a free port unless one was given) and serve from a background thread."""
        self._background.start(self._listen, self._shutdown)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        self._background.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        # TLS is started per connection in _handle, so a failed handshake is still counted.
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_HEAD_BYTES)

    async def _shutdown(self) -> None:
        self._hang.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        loop = self._background.loop
        if loop is None:
            coroutine.close()
            raise RuntimeError(f"{self.name} is not running")
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)

    def refuse_connections(self) -> None:
        """Close the listening socket: connects to :attr:`port` are refused until re-opened."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None

        self._call(close())

    def accept_connections(self) -> None:
        """Listen again on the same port after :meth:`refuse_connections`."""
        self._call(self._listen())

    # -- faults and observations -----------------------------------------------------------

    @contextlib.contextmanager
    def inject(self, plan: FaultPlan) -> Iterator[FaultPlan]:
        """Apply ``plan`` inside the ``with`` block; normal service is restored on exit."""
        with self._lock:
            self.plan = plan
        if self._background.loop is not None:
            self._background.loop.call_soon_threadsafe(self._hang.clear)
        try:
            yield plan
        finally:
            self.clear()

    def clear(self) -> None:
        """Back to forwarding everything; hung requests are released (and reset)."""
        with self._lock:
            self.plan = FaultPlan(FaultKind.PASS)
        if self._background.loop is not None and not self._background.loop.is_closed():
            self._background.loop.call_soon_threadsafe(self._hang.set)

    def reset_counts(self) -> None:
        with self._lock:
            self.accepted = self.handshakes = 0
            self.requests = []

    def requests_for(self, path_contains: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if path_contains in r.path]

    def _choose(self, method: str, path: str, headers: dict[str, str]) -> FaultPlan:
        with self._lock:
            plan = self.plan
            if plan.kind is not FaultKind.PASS and plan.matches(method, path, headers):
                plan.hits += 1
                return replace(plan)
            return FaultPlan(FaultKind.PASS)

    # -- one connection ----------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.accepted += 1
        try:
            if self.tls is not None:
                await writer.start_tls(self.tls)
                self.handshakes += 1
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_head(reader)
        if head is None:
            return
        method, _, rest = head.first_line.partition(" ")
        path = rest.rpartition(" ")[0] or rest
        length = int(head.get("Content-Length") or 0)
        body = await reader.readexactly(length) if length else b""
        headers = {key.lower(): value for key, value in head.headers}
        plan = self._choose(method, path, headers)
        with self._lock:
            self.requests.append(SeenRequest(method, path, headers, plan.kind))
        if plan.kind is FaultKind.RESET_BEFORE:
            _abort_with_reset(writer)
            return
        if plan.kind is FaultKind.HANG:
            await self._hang.wait()
            _abort_with_reset(writer)
            return
        if plan.kind is FaultKind.STATUS:
            extra = (
                {"Retry-After": str(plan.retry_after_seconds)}
                if plan.retry_after_seconds is not None
                else None
            )
            writer.write(_status_response(plan.status, head_only=method == "HEAD", extra=extra))
            await writer.drain()
            return
        if plan.kind is FaultKind.GARBAGE:
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\nnot an HTTP answer\r\n\r\n")
            await writer.drain()
            return
        if plan.kind is FaultKind.REDIRECT:
            location = plan.redirect_to.rstrip("/") + path
            redirect = _Head(
                "HTTP/1.1 307 Temporary Redirect",
                [("Location", location), ("Content-Length", "0"), ("Connection", "close")],
            )
            writer.write(redirect.encode())
            await writer.drain()
            return
        if self.upstream is None:
            writer.write(_status_response(404, head_only=method == "HEAD"))
            await writer.drain()
            return
        response_head, response_body = await self._forward(head, body)
        if plan.kind is FaultKind.RESET_MID_BODY and response_body:
            writer.write(response_head + response_body[: len(response_body) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)  # let the half body leave before the RST
            _abort_with_reset(writer)
            return
        if plan.kind is FaultKind.SLOW_BODY and response_body:
            writer.write(response_head)
            await writer.drain()
            interval = 1.0 / plan.bytes_per_second
            for index in range(len(response_body)):
                writer.write(response_body[index : index + 1])
                await writer.drain()
                await asyncio.sleep(interval)
            return
        writer.write(response_head + response_body)
        await writer.drain()

    async def _forward(self, head: _Head, body: bytes) -> tuple[bytes, bytes]:
        """Send the request upstream on a new connection; (raw head, raw framed body)."""
        assert self.upstream is not None
        headers = [(k, v) for k, v in head.headers if k.lower() not in ("connection", "keep-alive")]
        outgoing = _Head(head.first_line, [*headers, ("Connection", "close")])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*self.upstream), UPSTREAM_TIMEOUT_SECONDS
        )
        try:
            writer.write(outgoing.encode() + body)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), UPSTREAM_TIMEOUT_SECONDS)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        response_head, separator, response_body = raw.partition(b"\r\n\r\n")
        return response_head + separator, response_body


def self_signed_context(work_dir: Path, *, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for ``host`` (nobody trusts it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagewarden-untrusted-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = work_dir / "cert.pem", work_dir / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def free_dual_stack_port() -> int:
    """A port free on both 127.0.0.1 and ::1 a moment ago (for decoys on both families)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4:
            v4.bind(("127.0.0.1", 0))
            port = int(v4.getsockname()[1])
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
                try:
                    v6.bind(("::1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")
