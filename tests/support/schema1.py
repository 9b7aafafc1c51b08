"""A test double that serves a Docker schema 1 manifest, which distribution no longer accepts.

Registry 2.8 refuses schema 1 pushes by default and skopeo cannot convert to it for
pushing there, yet old images on real registries still answer with schema 1. This tiny
aiohttp "registry" serves, for one repository, a *signed* schema 1 manifest
(``application/vnd.docker.distribution.manifest.v1+prettyjws``, a libtrust JWS made here
with a fresh ES256 key) under tag ``1`` and an unsigned one
(``application/vnd.docker.distribution.manifest.v1+json``) under tag ``unsigned``, with
``Docker-Content-Digest`` computed the way distribution does (over the payload without
the signatures). Anything else gets distribution's JSON error bodies. It is a double for
exactly one behaviour, not a registry: no auth, no blobs, no uploads.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from tests.support.registry import LoggedRequest
from tests.support.tokenserver import BackgroundApp

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1_UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def schema1_payload(repo: str, tag: str, architecture: str = "amd64") -> bytes:
    """The unsigned schema 1 manifest body (3-space indent, as docker wrote them)."""
    layer_digest = _digest(f"{repo}:{tag} layer".encode())
    v1_compat = {
        "id": hashlib.sha256(f"{repo}:{tag}".encode()).hexdigest(),
        "created": "2016-01-01T00:00:00Z",
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
    }
    document = {
        "schemaVersion": 1,
        "name": repo,
        "tag": tag,
        "architecture": architecture,
        "fsLayers": [{"blobSum": layer_digest}],
        "history": [{"v1Compatibility": json.dumps(v1_compat, separators=(",", ":"))}],
    }
    return json.dumps(document, indent=3).encode()


def sign_schema1(payload: bytes) -> bytes:
    """Wrap ``payload`` in a libtrust "pretty JWS" signature block, as registry v2.0 did.

    The signature's protected header records ``formatLength`` and ``formatTail`` so that
    a verifier can cut the signatures back out and recover ``payload`` byte for byte.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    tail = payload[-2:]  # "\n}"
    format_length = len(payload) - len(tail)
    protected = _b64url(
        json.dumps(
            {
                "formatLength": format_length,
                "formatTail": _b64url(tail),
                "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
    )
    signing_input = f"{protected}.{_b64url(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(SHA256())))
    signature = {
        "header": {
            "jwk": {
                "crv": "P-256",
                "kty": "EC",
                "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big")),
            },
            "alg": "ES256",
        },
        "signature": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "protected": protected,
    }
    signatures = json.dumps([signature], indent=3).replace("\n", "\n   ")
    return payload[:format_length] + f',\n   "signatures": {signatures}'.encode() + tail


@dataclass
class Schema1Registry:
    """Serves ``repo:1`` (signed) and ``repo:unsigned`` as schema 1; start/stop like a server."""

    repo: str = "legacy/schema1"
    """The one repository served."""
    signed_tag: str = "1"
    unsigned_tag: str = "unsigned"
    _server: BackgroundApp | None = field(default=None, init=False, repr=False)
    _log: list[LoggedRequest] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        payload = schema1_payload(self.repo, self.signed_tag)
        unsigned = schema1_payload(self.repo, self.unsigned_tag)
        self.signed_body = sign_schema1(payload)
        """Signed body as served."""
        self.digest = _digest(payload)
        """``Docker-Content-Digest`` of the signed manifest (over the unsigned payload)."""
        self.unsigned_body = unsigned
        self.unsigned_digest = _digest(unsigned)
        # reference (tag or digest) -> (body, media type, digest)
        self._manifests = {
            self.signed_tag: (self.signed_body, SCHEMA1_SIGNED, self.digest),
            self.digest: (self.signed_body, SCHEMA1_SIGNED, self.digest),
            self.unsigned_tag: (unsigned, SCHEMA1_UNSIGNED, self.unsigned_digest),
            self.unsigned_digest: (unsigned, SCHEMA1_UNSIGNED, self.unsigned_digest),
        }

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("schema 1 registry is not running")
        return self._server.port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Schema1Registry:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = BackgroundApp(app, name="schema1-registry").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def request_log(self) -> list[LoggedRequest]:
        """Every request answered, oldest first."""
        with self._lock:
            return list(self._log)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = self._answer(request)
        with self._lock:
            self._log.append(LoggedRequest(request.method, request.path_qs, response.status))
        return response

    def _answer(self, request: web.Request) -> web.Response:
        headers = {"Docker-Distribution-Api-Version": "registry/2.0"}
        path = request.path
        if path in ("/v2", "/v2/"):
            return web.json_response({}, headers=headers)
        prefix = f"/v2/{self.repo}/"
        if path == prefix + "tags/list" and request.method == "GET":
            tags = [self.signed_tag, self.unsigned_tag]
            return web.json_response({"name": self.repo, "tags": tags}, headers=headers)
        if path.startswith(prefix + "manifests/") and request.method in ("GET", "HEAD"):
            found = self._manifests.get(path.removeprefix(prefix + "manifests/"))
            if found is not None:
                body, media_type, digest = found
                headers |= {"Docker-Content-Digest": digest, "Content-Type": media_type}
                # aiohttp sends Content-Length but no body for HEAD
                return web.Response(status=200, body=body, headers=headers)
            code, message = "MANIFEST_UNKNOWN", "manifest unknown"
        elif path.startswith(prefix):
            code, message = "UNSUPPORTED", "the operation is unsupported"
        else:
            code, message = "NAME_UNKNOWN", "repository name not known to registry"
        error = {"errors": [{"code": code, "message": message, "detail": {}}]}
        return web.json_response(error, status=404, headers=headers)
