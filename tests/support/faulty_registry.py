"""A deliberately misbehaving registry for malformed-answer tests.

The real distribution registry never sends invalid JSON, mismatching digests, 20 MiB manifests,
redirect loops, garbage tokens, schema 1 manifests or endless silence, so those answers come from
this small aiohttp app. The repository name picks the fault: ``/v2/fault/<FAULT>/manifests/<ref>``.
Everything else (the ``good`` repository, the config blob) behaves like a registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter

from aiohttp import web

from tests.support.tokenserver import BackgroundApp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
HUGE_BYTES = 20 * 1024 * 1024


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + "a" * 64,
                "size": 1234,
            }
        ],
    }
).encode()
SCHEMA1_BODY = json.dumps(
    {
        "schemaVersion": 1,
        "name": "fault/schema1",
        "tag": "1",
        "architecture": "amd64",
        "fsLayers": [],
        "history": [],
        "signatures": [],
    }
).encode()


class FaultyRegistry:
    """Runs the app on 127.0.0.1 in a background thread; counts requests per fault."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.rate_limited_left = 0
        self._server = BackgroundApp(self._app(), name="faulty-registry")
        self._hung: list[asyncio.Event] = []

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def start(self) -> FaultyRegistry:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v2/", self._ping)
        app.router.add_route("*", "/v2/fault/{fault}/manifests/{reference}", self._manifest)
        app.router.add_route("*", "/v2/fault/{fault}/blobs/{digest}", self._blob)
        app.router.add_get("/token", self._token)
        return app

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="{}")

    async def _token(self, request: web.Request) -> web.Response:
        self.requests["token"] += 1
        return web.Response(text="<html>definitely not a token</html>", content_type="text/html")

    async def _blob(self, request: web.Request) -> web.Response:
        if request.match_info["digest"] != _digest(CONFIG):
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=CONFIG, content_type="application/octet-stream")

    def _manifest_response(
        self, request: web.Request, body: bytes, media_type: str
    ) -> web.Response:
        headers = {"Docker-Content-Digest": _digest(body), "Content-Type": media_type}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        fault = request.match_info["fault"]
        self.requests[fault] += 1
        if fault == "good":
            return self._manifest_response(request, MANIFEST, OCI_MANIFEST)
        if fault == "invalid-json":
            return self._manifest_response(request, b"{not json", OCI_MANIFEST)
        if fault == "digest-mismatch":
            response = self._manifest_response(request, MANIFEST, OCI_MANIFEST)
            response.headers["Docker-Content-Digest"] = _digest(b"something else")
            return response
        if fault == "huge":
            body = b" " * HUGE_BYTES
            return self._manifest_response(request, body, OCI_MANIFEST)
        if fault == "huge-chunked":
            if request.method == "HEAD":
                return web.Response(headers={"Content-Type": OCI_MANIFEST})
            stream = web.StreamResponse(headers={"Content-Type": OCI_MANIFEST})
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            chunk = b" " * (1024 * 1024)
            try:
                for _ in range(20):
                    await stream.write(chunk)
            except (ConnectionResetError, RuntimeError):
                pass
            return stream
        if fault == "redirect-loop":
            raise web.HTTPFound(str(request.rel_url))
        if fault == "token-garbage":
            realm = f"{self.url}/token"
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="faulty"'},
            )
        if fault == "schema1":
            return self._manifest_response(request, SCHEMA1_BODY, SCHEMA1)
        if fault == "rate-limited":
            if self.rate_limited_left > 0:
                self.rate_limited_left -= 1
                return web.json_response(
                    {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
                    status=429,
                    headers={"Retry-After": "1", "RateLimit-Remaining": "0;w=21600"},
                )
            response = self._manifest_response(request, MANIFEST, OCI_MANIFEST)
            response.headers["RateLimit-Remaining"] = "99;w=21600"
            return response
        if fault == "rate-limited-long":
            return web.json_response(
                {"errors": [{"code": "TOOMANYREQUESTS"}]},
                status=429,
                headers={"Retry-After": "3600"},
            )
        if fault == "server-error":
            return web.json_response({"errors": [{"code": "UNAVAILABLE"}]}, status=503)
        if fault == "hang":
            event = asyncio.Event()
            self._hung.append(event)
            await event.wait()  # never set: the client's budget must end this
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
