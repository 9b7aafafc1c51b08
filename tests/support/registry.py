"""Run the CNCF distribution registry (Debian's ``docker-registry``) for tests.

:func:`start_registry` writes a config, starts ``docker-registry serve CONFIG`` on a free
127.0.0.1 port with its storage in a temp dir, waits until ``GET /v2/`` answers, and
returns a :class:`RunningRegistry`. Three auth modes:

* ``open``: no auth at all.
* ``htpasswd``: Basic auth against a bcrypt (cost 4: the registry checks it on every
  request, and cost 10 costs ~0.5 s each) htpasswd file; ``.credentials`` can push and pull.
* ``token``: Bearer tokens from :class:`tests.support.tokenserver.TokenServer`, which
  behaves like Docker Hub's auth service (see that module).

Images from :mod:`tests.support.images` are pushed with ``skopeo copy``; the digest
returned is the one ``skopeo inspect`` reports for the tag (the index digest for
multi-platform pushes). :meth:`RunningRegistry.request_log` parses the registry's own
access log (stdout, combined log format) into ``(method, path, status)`` records, so
tests can count exactly which requests a client made.

Processes are stopped by PID: :meth:`RunningRegistry.stop` terminates (then kills) the
one process it started, and an ``atexit`` hook stops any that a crashed test left.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import itertools
import json
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import bcrypt
import yaml

from tests.support.images import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    OCI_INDEX,
    OCI_MANIFEST,
    OciImage,
)
from tests.support.tokenserver import TokenServer

REGISTRY_BINARY = "docker-registry"
SKOPEO_BINARY = "skopeo"
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2])
"""Every manifest media type the registry may hold (it answers 404 without OCI types)."""
READY_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0
_SYNC_MARKER = "iw-log-sync"

AuthMode = Literal["open", "htpasswd", "token"]

# One regular expression per access-log field (gorilla/handlers combined log format):
#   127.0.0.1 - user [25/Nov/2026:18:39:19 +0000] "HEAD /v2/x/manifests/y HTTP/1.1" 404 93 "" "ua"
_ACCESS_LOG_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) '
)

_sync_counter = itertools.count(1)
_live_processes: dict[int, subprocess.Popen[bytes]] = {}


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate one process by PID, escalating to SIGKILL; always reaps it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_SECONDS)
    _live_processes.pop(process.pid, None)


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_live_processes.values()):
        _stop_process(process)


def require_binary(name: str) -> str:
    """Absolute path of ``name``; raises (so the test FAILS) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"{name!r} is not on PATH; install it with scripts/install-deps.sh "
            "(apt-get install docker-registry skopeo)"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoggedRequest(NamedTuple):
    """One request as the registry logged it."""

    method: str
    """HTTP method, e.g. ``HEAD``."""
    path: str
    """Request target as sent, including any query string (``/v2/a/b/tags/list?n=5``)."""
    status: int
    """HTTP status the registry answered."""


class RegistryStartError(RuntimeError):
    """The registry process exited or never became ready; the message has its log tail."""


@dataclass
class RunningRegistry:
    """A ``docker-registry`` process on 127.0.0.1, plus helpers to push and observe."""

    mode: AuthMode
    """``open``, ``htpasswd`` or ``token``."""
    port: int
    """The TCP port on 127.0.0.1."""
    work_dir: Path
    """Holds ``config.yml``, ``storage/``, the logs and auth files."""
    credentials: tuple[str, str] | None
    """(user, password) a client needs for private content: the htpasswd user, or the token
    server's reader of private repositories; None for an open registry."""
    push_credentials: tuple[str, str] | None
    """(user, password) the helpers push and delete with; None for an open registry."""
    token_server: TokenServer | None = None
    """The token server for ``token`` mode, else None."""
    owns_token_server: bool = False
    """True when :meth:`close` should stop :attr:`token_server` (it was started for us)."""
    process: subprocess.Popen[bytes] | None = None
    """The running process (None when stopped)."""

    # -- addresses ------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as it appears in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "config.yml"

    @property
    def storage_dir(self) -> Path:
        return self.work_dir / "storage"

    @property
    def access_log_path(self) -> Path:
        """The registry's stdout: one combined-log-format line per request."""
        return self.work_dir / "access.log"

    @property
    def app_log_path(self) -> Path:
        """The registry's stderr: logrus lines (startup, errors)."""
        return self.work_dir / "registry.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the process on :attr:`port` and wait for ``/v2/``; no-op when running."""
        if self.is_running:
            return
        binary = require_binary(REGISTRY_BINARY)
        stdout = self.access_log_path.open("ab")
        stderr = self.app_log_path.open("ab")
        try:
            process = subprocess.Popen(
                [binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        finally:
            stdout.close()
            stderr.close()
        _live_processes[process.pid] = process
        self.process = process
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry exited with {self.process.returncode} during startup:\n"
                    + self._log_tail()
                )
            with contextlib.suppress(OSError):
                status = self._raw_request("GET", "/v2/", {}, timeout_seconds=1)[0]
                if status in (200, 401):
                    return
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"docker-registry not ready on {self.url} after {READY_TIMEOUT_SECONDS} s:\n"
                    + self._log_tail()
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.app_log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the process by PID (idempotent); storage and logs are kept."""
        if self.process is not None:
            _stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same storage."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the registry, and the token server when it was started for this registry."""
        try:
            self.stop()
        finally:
            if self.token_server is not None and self.owns_token_server:
                self.token_server.stop()

    def registry_settings(self, *, with_credentials: bool = True) -> dict[str, str]:
        """A ``registries:`` entry pointing a host (quay.io, docker.io, …) at this registry."""
        settings = {"endpoint": self.url}
        if with_credentials and self.credentials is not None:
            settings["username"], settings["password"] = self.credentials
        return settings

    # -- pushing and inspecting ------------------------------------------------------

    def _creds_args(self, flag: str) -> list[str]:
        if self.push_credentials is None:
            return []
        user, password = self.push_credentials
        return [flag, f"{user}:{password}"]

    def reference(self, repo: str, tag_or_digest: str) -> str:
        """``127.0.0.1:PORT/repo:tag`` or ``…/repo@sha256:…``."""
        separator = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{separator}{tag_or_digest}"

    def push(
        self,
        image: OciImage,
        repo: str,
        tag: str,
        *,
        docker_v2s2: bool = False,
        all_platforms: bool = True,
    ) -> str:
        """Push ``image`` as ``repo:tag``; returns the digest ``skopeo inspect`` reports.

        ``docker_v2s2`` converts to Docker schema 2 media types (an index becomes a Docker
        manifest list). ``all_platforms`` pushes a whole index (``--all``); without it
        skopeo pushes only the linux/amd64 image. Pushing another image to the same tag
        moves the tag.
        """
        skopeo = require_binary(SKOPEO_BINARY)
        if self.token_server is not None:
            self.token_server.add_public(repo)
        with tempfile.TemporaryDirectory(prefix="iw-push-") as scratch:
            digest_file = Path(scratch) / "digest"
            command = [
                skopeo,
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--digestfile",
                str(digest_file),
                *self._creds_args("--dest-creds"),
            ]
            if all_platforms:
                command.append("--all")
            if docker_v2s2:
                command += ["--format", "v2s2"]
            command += [image.layout_ref, f"docker://{self.reference(repo, tag)}"]
            _run(command)
            return digest_file.read_text().strip()

    async def push_async(
        self,
        image: OciImage,
        repo: str,
        tag: str,
        *,
        docker_v2s2: bool = False,
        all_platforms: bool = True,
    ) -> str:
        """:meth:`push` in a worker thread, for async tests."""
        return await asyncio.to_thread(
            self.push, image, repo, tag, docker_v2s2=docker_v2s2, all_platforms=all_platforms
        )

    def inspect_raw(self, repo: str, tag_or_digest: str) -> bytes:
        """The top-level manifest body via ``skopeo inspect --raw``."""
        command = [
            require_binary(SKOPEO_BINARY),
            "inspect",
            "--tls-verify=false",
            "--raw",
            *self._creds_args("--creds"),
            f"docker://{self.reference(repo, tag_or_digest)}",
        ]
        return _run(command)

    def inspect_digest(self, repo: str, tag_or_digest: str) -> str:
        """sha256 of ``skopeo inspect --raw`` (what a client must report for the tag)."""
        return "sha256:" + hashlib.sha256(self.inspect_raw(repo, tag_or_digest)).hexdigest()

    # -- registry API ----------------------------------------------------------------

    def api_request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One registry API request with the push credentials (Basic or Bearer as needed)."""
        headers = dict(headers or {})
        if self.mode == "htpasswd" and self.push_credentials is not None:
            headers["Authorization"] = _basic(self.push_credentials)
        status, response_headers, body = self._raw_request(method, path, headers)
        challenge = response_headers.get("www-authenticate", "")
        if status == 401 and challenge.lower().startswith("bearer"):
            headers["Authorization"] = "Bearer " + self._fetch_token(challenge)
            status, response_headers, body = self._raw_request(method, path, headers)
        return status, response_headers, body

    def _fetch_token(self, challenge: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode(
            {k: v for k, v in params.items() if k in ("service", "scope")}
        )
        headers = (
            {}
            if self.push_credentials is None
            else {"Authorization": _basic(self.push_credentials)}
        )
        status, _, body = http_request("GET", f"{params['realm']}?{query}", headers)
        if status != 200:
            raise RuntimeError(f"token server answered {status}: {body[:200]!r}")
        answer = json.loads(body)
        return str(answer.get("token") or answer["access_token"])

    def _raw_request(
        self, method: str, path: str, headers: dict[str, str], timeout_seconds: float = 10
    ) -> tuple[int, dict[str, str], bytes]:
        return http_request(method, self.url + path, headers, timeout_seconds=timeout_seconds)

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """``Docker-Content-Digest`` of a HEAD for the manifest; None when it does not exist."""
        status, headers, _ = self.api_request(
            "HEAD", f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
        )
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"HEAD manifest {repo}:{reference} answered {status}")
        return headers["docker-content-digest"]

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (and so every tag pointing at it)."""
        status, _, body = self.api_request("DELETE", f"/v2/{repo}/manifests/{digest}")
        if status != 202:
            raise RuntimeError(f"DELETE {repo}@{digest} answered {status}: {body[:200]!r}")

    def delete_tag(self, repo: str, tag: str) -> str:
        """Make ``repo:tag`` disappear; returns the digest it pointed at.

        Registry 2.8 cannot untag, so this deletes the manifest the tag points at: any
        other tag on the same manifest disappears too. Push a salted image per tag when
        that matters.
        """
        digest = self.manifest_digest(repo, tag)
        if digest is None:
            raise KeyError(f"{repo}:{tag} does not exist in {self.host}")
        self.delete_manifest(repo, digest)
        return digest

    # -- observing -------------------------------------------------------------------

    def request_log(self) -> list[LoggedRequest]:
        """Every request the registry has logged so far, oldest first.

        The registry writes a log line just after it sends the response, so first this
        sends a marker request and waits until the marker is logged; marker requests
        are left out of the result.
        """
        if self.is_running:
            marker = f"{_SYNC_MARKER}={next(_sync_counter)}-{secrets.token_hex(4)}"
            with contextlib.suppress(OSError):
                self._raw_request("GET", f"/v2/?{marker}", {}, timeout_seconds=5)
            deadline = time.monotonic() + 5
            while marker not in self._read_access_log() and time.monotonic() < deadline:
                time.sleep(0.01)
        records = []
        for line in self._read_access_log().splitlines():
            match = _ACCESS_LOG_LINE.match(line)
            if match is None or _SYNC_MARKER in match["target"]:
                continue
            records.append(LoggedRequest(match["method"], match["target"], int(match["status"])))
        return records

    def _read_access_log(self) -> str:
        try:
            return self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count_requests(
        self,
        path: str,
        methods: tuple[str, ...] = ("HEAD", "GET"),
        since: int = 0,
    ) -> int:
        """How many logged requests hit exactly ``path`` with one of ``methods``.

        ``since``: skip the first N log records (take ``len(request_log())`` before the
        action under test).
        """
        return sum(
            1
            for record in self.request_log()[since:]
            if record.path == path and record.method in methods
        )

    def manifest_requests(
        self, repo: str, reference: str, methods: tuple[str, ...] = ("HEAD", "GET"), since: int = 0
    ) -> int:
        """How many manifest requests for ``repo`` / ``reference`` (tag or digest) were logged."""
        return self.count_requests(f"/v2/{repo}/manifests/{reference}", methods, since)


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


def http_request(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    *,
    timeout_seconds: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to a test server: (status, lower-cased headers, body).

    Error statuses are returned, not raised. Header names are lower-cased because Go
    canonicalizes ``WWW-Authenticate`` to ``Www-Authenticate``.
    """
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"test HTTP requests go to http://127.0.0.1 only, not {url!r}")
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310 - checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:  # noqa: S310
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers.items()), error.read()


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def _run(command: list[str]) -> bytes:
    completed = subprocess.run(command, capture_output=True, timeout=120, check=False)
    if completed.returncode != 0:
        shown = [
            ("***" if i > 0 and command[i - 1].endswith("creds") else a)
            for i, a in enumerate(command)
        ]
        raise RuntimeError(
            f"{' '.join(shown)} failed with {completed.returncode}:\n"
            f"{completed.stderr.decode(errors='replace')}"
        )
    return completed.stdout


def _registry_config(
    work_dir: Path, port: int, auth: dict[str, object] | None
) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(work_dir / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if auth is not None:
        config["auth"] = auth
    return config


def start_registry(
    work_dir: Path,
    *,
    mode: AuthMode = "open",
    token_server: TokenServer | None = None,
    htpasswd_user: str = "alice",
    reader: tuple[str, str] | None = None,
    private_repos: tuple[str, ...] = (),
) -> RunningRegistry:
    """Start a registry in ``work_dir`` (created) in the given auth mode.

    ``token`` mode starts a :class:`TokenServer` unless one is given (one started here is
    stopped by :meth:`RunningRegistry.close`; a given one is left to its owner). ``reader``
    is the account that may pull ``private_repos`` (a random password is made when None).
    """
    require_binary(REGISTRY_BINARY)
    require_binary(SKOPEO_BINARY)
    work_dir.mkdir(parents=True, exist_ok=True)
    auth: dict[str, object] | None = None
    credentials: tuple[str, str] | None = None
    push_credentials: tuple[str, str] | None = None
    owns_token_server = False
    if mode == "htpasswd":
        password = secrets.token_urlsafe(12)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd = work_dir / "htpasswd"
        htpasswd.write_text(f"{htpasswd_user}:{hashed}\n")
        auth = {"htpasswd": {"realm": "imagewarden-test", "path": str(htpasswd)}}
        credentials = push_credentials = (htpasswd_user, password)
    elif mode == "token":
        if token_server is None:
            token_server = TokenServer().start()
            owns_token_server = True
        credentials = reader or ("reader", secrets.token_urlsafe(12))
        token_server.users[credentials[0]] = credentials[1]
        token_server.add_private(*private_repos)
        push_credentials = token_server.push_credentials
        bundle = token_server.write_root_cert_bundle(work_dir / "token-ca.pem")
        auth = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(bundle),
            }
        }
    elif mode != "open":
        raise ValueError(f"unknown registry auth mode {mode!r}")

    last_error: RegistryStartError | None = None
    try:
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = free_port()
            config = _registry_config(work_dir, port, auth)
            (work_dir / "config.yml").write_text(yaml.safe_dump(config))
            registry = RunningRegistry(
                mode=mode,
                port=port,
                work_dir=work_dir,
                credentials=credentials,
                push_credentials=push_credentials,
                token_server=token_server,
                owns_token_server=owns_token_server,
            )
            try:
                registry.start()
                return registry
            except RegistryStartError as error:
                if "address already in use" not in str(error):
                    raise
                last_error = error
        assert last_error is not None
        raise last_error
    except BaseException:
        if owns_token_server and token_server is not None:
            token_server.stop()
        raise
