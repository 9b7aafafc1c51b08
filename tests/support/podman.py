"""A real podman Docker-API service for tests, with all of its state under one temp dir.

``podman system service`` serves the Docker Engine API on a unix socket, so the ``docker``
Python package (and therefore the node agent's Docker engine) talks to it as to dockerd.
Nothing under /etc is touched: ``containers.conf``, ``registries.conf`` and ``storage.conf``
are written under the service's root and passed through ``CONTAINERS_CONF``,
``CONTAINERS_REGISTRIES_CONF`` and ``CONTAINERS_STORAGE_CONF`` (see
``shared/notes/local-registry.md`` for why each setting is needed on this machine):

- ``default_ulimits`` with ``nofile=N:N`` where N is the hard limit (``ulimit -Hn``): podman's
  defaults fail here with "error setting rlimit";
- ``cgroup_manager = "cgroupfs"`` and ``events_logger = "file"``: no systemd in the sandbox;
- every loopback registry is plain HTTP: ``location = "127.0.0.1"`` with ``insecure = true``
  also matches ``127.0.0.1:PORT`` (containers/image matches a host prefix followed by ``:``),
  so registries started after the service are reachable without rewriting the file (the
  service caches registries.conf for its whole life).

:func:`start_podman_service` starts one and waits for the socket to answer ``_ping``; the
returned :class:`PodmanService` stops it by PID. :meth:`PodmanService.cli` runs the
``podman`` command line directly on the same storage (what ``bench/bench_agent.py`` compares
against). The ``podman_service`` fixture in :mod:`tests.support.agent_fixtures` wraps this.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PODMAN = "podman"
STARTUP_TIMEOUT_SECONDS = 30.0
"""Podman answers in 0.1-0.5 s here; a loaded CI machine gets much more."""
STOP_TIMEOUT_SECONDS = 10.0

_INSECURE_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class PodmanUnavailableError(RuntimeError):
    """podman is not installed or its service did not start (tests fail, never skip)."""


def containers_conf(nofile_limit: int, tmp_dir: Path) -> str:
    """``containers.conf`` that lets containers and pulls work in this sandbox.

    ``tmp_dir`` replaces ``/run/libpod``, which every root podman on the machine shares
    (image builds of other tests included) for its reboot detection and event log.
    """
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile_limit}:{nofile_limit}", "nproc=32768:32768"]\n'
        'netns = "slirp4netns"\n'
        "\n[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{tmp_dir}"\n'
    )


def registries_conf(insecure_hosts: tuple[str, ...] = _INSECURE_HOSTS) -> str:
    """``registries.conf`` with no search registries and every loopback host plain HTTP."""
    entries = "".join(
        f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in insecure_hosts
    )
    return 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' + entries


def storage_conf(root: Path, driver: str) -> str:
    """``storage.conf`` keeping images and run state under ``root``."""
    return (
        "[storage]\n"
        f'driver = "{driver}"\n'
        f'graphroot = "{root / "graph"}"\n'
        f'runroot = "{root / "run"}"\n'
    )


def hard_nofile_limit() -> int:
    """The hard open-files limit of this process (what ``ulimit -Hn`` prints)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1_048_576
    return int(hard)


@dataclass
class PodmanService:
    """A running ``podman system service`` and the files it was started with."""

    root: Path
    """Directory holding the config files, storage and socket."""
    socket_path: Path
    """The Docker API unix socket."""
    process: subprocess.Popen[bytes]
    """The service process; stopped by its PID in :meth:`stop`."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment that points podman (CLI or service) at this instance's files."""

    @property
    def pid(self) -> int:
        """PID of the service process."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        """``unix://…`` URL for ``docker.DockerClient(base_url=…)`` / ``DOCKER_HOST``."""
        return f"unix://{self.socket_path}"

    def cli(
        self, *args: str, check: bool = True, timeout_seconds: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``podman`` command line on this instance's storage and config."""
        return subprocess.run(
            [PODMAN, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout_seconds,
        )

    def log_text(self) -> str:
        """What the service wrote to its log so far (for assertion messages)."""
        path = self.root / "service.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the service by PID (SIGTERM, then SIGKILL), wait, and unmount its storage."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        unmount_below(self.root)


def mounts_below(root: Path) -> list[str]:
    """Mount points under ``root`` (overlay storage leaves its own, and one per layer in use)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point.startswith(prefix):
                found.append(mount_point)
    return found


def unmount_below(root: Path) -> None:
    """Lazily unmount everything under ``root``, deepest first, so the temp dir can go."""
    for mount_point in sorted(set(mounts_below(root)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)


def podman_env(root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that point podman at the files under ``root``."""
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(root / "containers.conf")
    env["CONTAINERS_REGISTRIES_CONF"] = str(root / "registries.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(root / "storage.conf")
    # Keep podman's own per-user files (e.g. auth.json) out of the real home directory.
    env["XDG_RUNTIME_DIR"] = str(root / "xdg-run")
    env["XDG_CONFIG_HOME"] = str(root / "xdg-config")
    env["REGISTRY_AUTH_FILE"] = str(root / "auth.json")
    return env


def write_config(root: Path, *, driver: str = "overlay") -> dict[str, str]:
    """Write the three config files under ``root``; return the environment using them."""
    for sub in ("graph", "run", "xdg-run", "xdg-config", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "libpod-tmp").mkdir(exist_ok=True)
    (root / "containers.conf").write_text(containers_conf(hard_nofile_limit(), root / "libpod-tmp"))
    (root / "registries.conf").write_text(registries_conf())
    (root / "storage.conf").write_text(storage_conf(root, driver))
    (root / "auth.json").write_text('{"auths": {}}\n')
    env = podman_env(root)
    env["TMPDIR"] = str(root / "tmp")
    return env


def _ping(socket_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200" in reply


def start_podman_service(root: Path, *, driver: str = "overlay") -> PodmanService:
    """Start ``podman system service`` with its config, storage and socket under ``root``."""
    if shutil.which(PODMAN) is None:
        raise PodmanUnavailableError(
            "podman is not installed; run scripts/install-deps.sh (apt-get install podman)"
        )
    root.mkdir(parents=True, exist_ok=True)
    env = write_config(root, driver=driver)
    socket_path = root / "podman.sock"
    log = (root / "service.log").open("wb")
    process = subprocess.Popen(
        [PODMAN, "--log-level=info", "system", "service", "--time=0", f"unix://{socket_path}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    service = PodmanService(root=root, socket_path=socket_path, process=process, env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PodmanUnavailableError(
                f"podman system service exited with {process.returncode}: "
                f"{service.log_text()[-2000:]}"
            )
        if _ping(socket_path):
            return service
        time.sleep(0.05)
    service.stop()
    raise PodmanUnavailableError(
        f"podman system service did not answer on {socket_path} within "
        f"{STARTUP_TIMEOUT_SECONDS:.0f}s: {service.log_text()[-2000:]}"
    )


@contextlib.contextmanager
def podman_service(root: Path, *, driver: str = "overlay") -> Iterator[PodmanService]:
    """Context manager form of :func:`start_podman_service` that always stops it."""
    service = start_podman_service(root, driver=driver)
    try:
        yield service
    finally:
        service.stop()
