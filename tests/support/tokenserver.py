"""A token server for the distribution registry's token auth, behaving like Docker Hub's.

The registry (``docker-registry`` with ``auth: token:``) answers unauthenticated requests
with ``401`` and ``WWW-Authenticate: Bearer realm=…,service=…,scope=…``. Clients then ask
this server for a token:

* ``GET /token?service=S&scope=repository:NAME:pull`` (skopeo, Docker, anonymous clients),
  optionally with Basic auth;
* ``POST /token`` with a form ``grant_type=password&username=…&password=…&service=…&scope=…``
  (containerd's default; it does not fall back to GET).

Access rules, like Hub and quay.io: anonymous callers get ``pull`` on public repositories;
known users also get ``pull`` on private ones; the push user gets everything. For a private
or unknown repository an anonymous caller still gets a token, but with an EMPTY access list,
so the registry answers ``401`` with ``error="insufficient_scope"``: a client cannot tell
"private" from "does not exist" (set ``grant_unknown_repos`` to behave like a self-hosted
registry: a manifest request then gets ``404 MANIFEST_UNKNOWN``, ``tags/list`` gets
``404 NAME_UNKNOWN``). Wrong credentials get ``401``.

Tokens are ES256 JWTs whose header carries an ``x5c`` chain (leaf, then a self-signed CA);
the CA certificate is the registry's ``rootcertbundle``. ``iss`` is the issuer and ``aud``
the service the registry is configured with.

The server runs in-process on its own event loop in a background thread, so sync and
async tests use it alike. It counts requests, records what it granted, and can be switched
into a fault mode (:class:`TokenFault`) to test clients against a broken token endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import enum
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.background import BackgroundLoop

DEFAULT_SERVICE = "registry.test"
DEFAULT_ISSUER = "imagewarden-test-token-issuer"
PUSH_USER = "pusher"
"""The account the fixtures push images with; it gets every action on every repository."""


class BackgroundApp:
    """Serve an aiohttp app on a free 127.0.0.1 port from its own loop in a daemon thread.

    Usable from sync tests and from async tests (whose loop it never touches).
    """

    def __init__(self, app: web.Application, *, name: str) -> None:
        self.app = app
        self.name = name
        self.port = 0
        self._background = BackgroundLoop(name)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The serving loop, for ``call_soon_threadsafe`` from tests; None when stopped."""
        return self._background.loop

    def start(self) -> BackgroundApp:
        """Bind, start serving and return once the socket accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        runner = web.AppRunner(self.app, access_log=None)

        async def serve() -> None:
            try:
                await runner.setup()
                await web.SockSite(runner, sock).start()
            except BaseException:
                sock.close()
                raise

        self._background.start(serve, runner.cleanup)
        return self

    def stop(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        self._background.stop()


class TokenFault(enum.Enum):
    """How the token endpoint misbehaves; ``NONE`` is normal service."""

    NONE = "none"
    UNAVAILABLE = "unavailable"
    """503 with a JSON error body, like an overloaded auth service."""
    GARBAGE = "garbage"
    """200 with an HTML body that is not JSON."""
    NO_TOKEN = "no_token"
    """200 with valid JSON that has neither ``token`` nor ``access_token``."""
    UNTRUSTED_SIGNATURE = "untrusted_signature"
    """A well-formed token signed by a key the registry does not trust (registry answers 401)."""
    HANG = "hang"
    """Accept the request and never answer (until the fault is cleared or 120 s pass)."""
    RESET = "reset"
    """Close the connection without an HTTP response."""


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered, for assertions in tests."""

    method: str
    """``GET`` or ``POST``."""
    user: str | None
    """The authenticated user, or None for anonymous (or refused) callers."""
    scopes: tuple[str, ...]
    """The ``scope`` values requested."""
    granted: tuple[tuple[str, tuple[str, ...]], ...]
    """(repository, actions) granted, one per requested repository scope."""
    status: int
    """HTTP status answered (0 when the connection was dropped)."""


@dataclass
class _SigningMaterial:
    key: ec.EllipticCurvePrivateKey
    x5c: list[str]
    ca_pem: bytes


def _make_certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_name: str,
    signing_key: ec.EllipticCurvePrivateKey,
    is_ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def _make_signing_material() -> _SigningMaterial:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _make_certificate(
        "imagewarden test token CA", ca_key.public_key(), "imagewarden test token CA", ca_key, True
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = _make_certificate(
        "imagewarden test token signer",
        leaf_key.public_key(),
        "imagewarden test token CA",
        ca_key,
        False,
    )
    x5c = [
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        for cert in (leaf_cert, ca_cert)
    ]
    return _SigningMaterial(
        key=leaf_key, x5c=x5c, ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM)
    )


def _parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``repository:NAME:pull,push`` -> (type, NAME, actions); None when malformed."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return kind, name, tuple(a for a in actions.split(",") if a)


@dataclass
class TokenServer:
    """Issues registry tokens; start with :meth:`start`, stop with :meth:`stop`."""

    service: str = DEFAULT_SERVICE
    """The ``service`` the registry announces; becomes the token's ``aud``."""
    issuer: str = DEFAULT_ISSUER
    """The token's ``iss``; must equal the registry's ``auth.token.issuer``."""
    expires_in_seconds: int = 300
    """Token lifetime announced as ``expires_in`` and written as ``exp``."""
    users: dict[str, str] = field(default_factory=dict)
    """username -> password of accounts that may read private repositories."""
    push_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    """Password of :data:`PUSH_USER`, the account that may push anything."""
    private_repos: set[str] = field(default_factory=set)
    """Repositories only known users may pull."""
    public_repos: set[str] = field(default_factory=set)
    """Repositories anyone may pull (the registry fixture adds each repo it pushes)."""
    grant_unknown_repos: bool = False
    """Grant anonymous pull on repositories in neither set (self-hosted style) instead of none."""
    fault: TokenFault = TokenFault.NONE
    """Current fault mode; switch it at any time from any thread."""

    def __post_init__(self) -> None:
        self._signing = _make_signing_material()
        self._untrusted = _make_signing_material()
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: BackgroundApp | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The realm URL the registry sends clients to."""
        return f"{self.url}/token"

    @property
    def push_credentials(self) -> tuple[str, str]:
        """(user, password) with push access to every repository."""
        return PUSH_USER, self.push_password

    def write_root_cert_bundle(self, path: Path) -> Path:
        """Write the CA certificate that signs our tokens (the registry's ``rootcertbundle``)."""
        path.write_bytes(self._signing.ca_pem)
        return path

    def start(self) -> TokenServer:
        """Listen on a free 127.0.0.1 port in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("token server already started")
        self._server = BackgroundApp(self._make_app(), name="token-server").start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        self.fault = TokenFault.NONE  # releases HANG handlers
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ----------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request answered so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def token_requests(self) -> int:
        """How many token requests arrived (any method, any outcome)."""
        with self._lock:
            return len(self._requests)

    def reset_counts(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self._requests.clear()

    # -- access policy ----------------------------------------------------------------

    def add_private(self, *repos: str) -> None:
        """Make repositories readable only by known users."""
        self.private_repos.update(repos)
        self.public_repos.difference_update(repos)

    def add_public(self, *repos: str) -> None:
        """Make repositories pullable anonymously (unless they are private)."""
        self.public_repos.update(r for r in repos if r not in self.private_repos)

    def _grant(self, user: str | None, repo: str, wanted: Iterable[str]) -> tuple[str, ...]:
        wanted = tuple(wanted)
        if user == PUSH_USER:
            return wanted
        if repo in self.private_repos:
            allowed: set[str] = {"pull"} if user is not None else set()
        elif repo in self.public_repos or self.grant_unknown_repos:
            allowed = {"pull"}
        else:
            allowed = set()
        return tuple(action for action in wanted if action in allowed)

    def _authenticate(self, username: str | None, password: str | None) -> str | None:
        """The user name when the pair is valid; None for anonymous; raises on bad pairs."""
        if username is None:
            return None
        if username == PUSH_USER and secrets.compare_digest(password or "", self.push_password):
            return username
        known = self.users.get(username)
        if known is not None and secrets.compare_digest(password or "", known):
            return username
        raise PermissionError(username)

    # -- HTTP -------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._handle)
        app.router.add_post("/token", self._handle)
        return app

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self.fault
        if request.method == "POST":
            form = await request.post()
            params = {k: str(v) for k, v in form.items()}
            scopes = tuple(str(v) for v in form.getall("scope", []))
            if len(scopes) == 1 and " " in scopes[0]:  # OAuth2 style: space-separated
                scopes = tuple(scopes[0].split())
            username: str | None = params.get("username")
            password: str | None = params.get("password")
            if params.get("grant_type") not in ("password", None):
                self._record(TokenRequest("POST", None, scopes, (), 400))
                return web.json_response({"error": "unsupported_grant_type"}, status=400)
        else:
            scopes = tuple(request.query.getall("scope", []))
            params = dict(request.query)
            username = password = None
            header = request.headers.get("Authorization", "")
            if header.lower().startswith("basic "):
                try:
                    decoded = base64.b64decode(header[6:].strip()).decode()
                except (ValueError, UnicodeDecodeError):
                    decoded = ""
                username, _, password = decoded.partition(":")

        if fault is not TokenFault.NONE and fault is not TokenFault.UNTRUSTED_SIGNATURE:
            return await self._misbehave(request, fault, scopes)

        try:
            user = self._authenticate(username, password)
        except PermissionError:
            self._record(TokenRequest(request.method, None, scopes, (), 401))
            return web.json_response(
                {"details": "incorrect username or password"},
                status=401,
                headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
            )
        if params.get("service", self.service) != self.service:
            self._record(TokenRequest(request.method, user, scopes, (), 400))
            return web.json_response(
                {"details": f"unknown service {params.get('service')!r}"}, status=400
            )

        access: list[dict[str, object]] = []
        granted: list[tuple[str, tuple[str, ...]]] = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            _, repo, wanted = parsed
            actions = self._grant(user, repo, wanted)
            granted.append((repo, actions))
            # Like Hub: the entry is present with an empty action list when nothing is granted.
            access.append({"type": "repository", "name": repo, "actions": list(actions)})

        token = self._sign(user, access, untrusted=fault is TokenFault.UNTRUSTED_SIGNATURE)
        self._record(TokenRequest(request.method, user, scopes, tuple(granted), 200))
        issued_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in_seconds,
                "issued_at": issued_at,
            }
        )

    async def _misbehave(
        self, request: web.Request, fault: TokenFault, scopes: tuple[str, ...]
    ) -> web.StreamResponse:
        if fault is TokenFault.UNAVAILABLE:
            self._record(TokenRequest(request.method, None, scopes, (), 503))
            return web.json_response({"details": "service unavailable"}, status=503)
        if fault is TokenFault.GARBAGE:
            self._record(TokenRequest(request.method, None, scopes, (), 200))
            return web.Response(
                text="<html><body>Bad gateway {not json", content_type="application/json"
            )
        if fault is TokenFault.NO_TOKEN:
            self._record(TokenRequest(request.method, None, scopes, (), 200))
            return web.json_response({"expires_in": 60, "detail": "no token for you"})
        if fault is TokenFault.HANG:
            self._record(TokenRequest(request.method, None, scopes, (), 0))
            deadline = time.monotonic() + 120
            # fault is switched from other threads, so poll rather than share an asyncio.Event
            while self.fault is TokenFault.HANG and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return web.json_response({"details": "gave up hanging"}, status=503)
        # RESET: drop the connection without answering.
        self._record(TokenRequest(request.method, None, scopes, (), 0))
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)

    def _sign(self, user: str | None, access: list[dict[str, object]], *, untrusted: bool) -> str:
        material = self._untrusted if untrusted else self._signing
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in_seconds,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, material.key, algorithm="ES256", headers={"x5c": material.x5c})
