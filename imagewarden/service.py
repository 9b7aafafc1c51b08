"""The checker service (``imagewarden serve``): the hub asks it over HTTP.

Routes (DESIGN.md contract 4):

- ``POST /api/v1/check`` ``{"image": …, "profile": …}`` → 200 with the verdict JSON for both
  verdicts; 400 for a malformed body, 401 without the token when one is configured, 413 over
  ``service.max_body_bytes``.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (config loaded, HTTP session open),
  ``GET /metrics`` (Prometheus text format, the app's own ``CollectorRegistry``).

One :class:`~imagewarden.registry.RegistryClient` (one aiohttp session) per process, opened and
closed in ``cleanup_ctx``. At most ``service.max_concurrent_checks`` checks run at once; the
checker's own single-flight makes a spawn storm for one image one registry request. Access logs
are JSON lines without headers, so tokens never reach them. SIGTERM stops accepting connections
and lets in-flight checks finish.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client.aiohttp import make_aiohttp_handler

from imagewarden.checker import Checker
from imagewarden.config import Settings
from imagewarden.errors import ConfigError
from imagewarden.metrics import Metrics
from imagewarden.registry import RegistryClient

log = logging.getLogger(__name__)

TOKEN_ENV = "IMAGEWARDEN_TOKEN"  # noqa: S105 - the variable's name, not a token
MAX_PROFILE_CHARS = 255
SHUTDOWN_GRACE_SECONDS = 10.0
"""In-flight checks get this long after SIGTERM (a check's budget is 5 s by default)."""

SETTINGS_KEY = web.AppKey("settings", Settings)
METRICS_KEY = web.AppKey("metrics", Metrics)
TOKEN_KEY = web.AppKey("token", str)
CHECKER_KEY = web.AppKey("checker", Checker)
LIMIT_KEY = web.AppKey("limit", asyncio.Semaphore)


def read_token(settings: Settings) -> str | None:
    """The bearer token required on /api/v1/check: ``service.token_file``, else the env var."""
    if settings.service.token_file:
        try:
            token = Path(settings.service.token_file).read_text().strip()
        except OSError as error:
            raise ConfigError(
                "service.token_file",
                f"cannot read {settings.service.token_file!r}: {error.strerror}",
            ) from None
        if not token:
            raise ConfigError("service.token_file", f"{settings.service.token_file!r} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(request: web.Request) -> bool:
    expected = request.app.get(TOKEN_KEY)
    if not expected:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), expected.encode()
    )


def _parse_body(raw: bytes) -> tuple[str, str | None]:
    """(image, profile) from the request body; ValueError says what is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # "[[[[…" nests too deep
        raise ValueError(
            'The request body must be JSON like {"image": "quay.io/org/name:tag"}.'
        ) from None
    if not isinstance(body, dict):
        raise ValueError('The request body must be a JSON object with an "image" key.')
    unknown = sorted(set(body) - {"image", "profile"})
    if unknown:
        raise ValueError(f'Unknown key {unknown[0][:40]!r}; only "image" and "profile" are read.')
    image, profile = body.get("image"), body.get("profile")
    if not isinstance(image, str):
        raise ValueError('"image" must be a string holding the image reference.')
    if profile is not None and (not isinstance(profile, str) or len(profile) > MAX_PROFILE_CHARS):
        raise ValueError('"profile" must be a profile name (a string) or null.')
    return image, profile


async def check_handler(request: web.Request) -> web.Response:
    if not _authorized(request):
        return web.json_response(
            {"error": "A bearer token is required."},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="imagewarden"'},
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS_KEY].service.max_body_bytes
        return _error(413, f"The request body is larger than {limit} bytes.")
    try:
        image, profile = _parse_body(raw)
    except ValueError as error:
        return _error(400, str(error))
    async with request.app[LIMIT_KEY]:
        verdict = await request.app[CHECKER_KEY].check(image, profile=profile)
    return web.json_response(verdict.as_json())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if CHECKER_KEY not in request.app:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON line per request: no headers, no body, so no token or credential is logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            json.dumps(
                {
                    "remote": request.remote,
                    "method": request.method,
                    "path": request.path[:256],
                    "status": response.status,
                    "duration_seconds": round(time, 6),
                    "bytes": response.body_length,
                }
            )
        )


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    token: str | None = None,
    client: RegistryClient | None = None,
) -> web.Application:
    """The service app; ``client`` lets tests share a registry client, else one is opened."""
    app = web.Application(client_max_size=settings.service.max_body_bytes)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics or Metrics()
    if token:
        app[TOKEN_KEY] = token
    app[LIMIT_KEY] = asyncio.Semaphore(settings.service.max_concurrent_checks)

    async def registry_session(app: web.Application) -> AsyncIterator[None]:
        if client is not None:
            app[CHECKER_KEY] = Checker(settings, client, metrics=app[METRICS_KEY])
            yield
            return
        async with RegistryClient(settings, metrics=app[METRICS_KEY]) as opened:
            app[CHECKER_KEY] = Checker(settings, opened, metrics=app[METRICS_KEY])
            yield

    app.cleanup_ctx.append(registry_session)
    app.router.add_post("/api/v1/check", check_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(app[METRICS_KEY].registry))
    return app


def _serve(args: argparse.Namespace) -> int:
    from imagewarden.cli import load_settings

    settings = load_settings(args)
    token = read_token(settings)
    host = args.host or settings.service.host
    port = args.port if args.port is not None else settings.service.port
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    logging.getLogger(__name__).setLevel(logging.INFO)
    started = time.monotonic()
    log.info("imagewarden serve on %s:%d (token %s)", host, port, "required" if token else "off")
    web.run_app(
        create_app(settings, token=token),
        host=host,
        port=port,
        access_log_class=JsonAccessLogger,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        print=lambda message: log.info("%s (after %.2fs)", message, time.monotonic() - started),
    )
    return 0


def add_parser(subparsers: Any) -> None:
    from imagewarden.cli import add_config_argument

    parser = subparsers.add_parser(
        "serve",
        help="run the checker service the hub asks over HTTP",
        description="Serve POST /api/v1/check, /healthz, /readyz and /metrics. Without a config "
        "it listens on 127.0.0.1:8080 and allows docker.io and quay.io. Set a token with "
        f"service.token_file or the {TOKEN_ENV} environment variable.",
    )
    add_config_argument(parser)
    parser.add_argument("--host", help="listen address (default: service.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: service.port, 8080)")
    parser.set_defaults(handler=_serve)
