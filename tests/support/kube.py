"""A real Kubernetes control plane on loopback for tests: etcd, API server, controllers.

:class:`KubeCluster` starts Debian's ``etcd`` and the ``kube-apiserver``,
``kube-controller-manager`` and ``kube-scheduler`` 1.20.2 binaries that
``scripts/build-kubernetes.sh`` builds into ``/var/cache/imagewarden-test/kubernetes-1.20.2/bin``.
Everything listens on 127.0.0.1 free ports; state lives under one base directory:

* ``certs/``: a throw-away CA and the API server's serving certificate (also the controller
  manager's ``--root-ca-file``, so ServiceAccount token secrets carry a usable ``ca.crt``), and
  the ServiceAccount signing key pair;
* ``tokens.csv``: static bearer tokens: ``admin`` (group ``system:masters``) and a pool of plain
  users (``user-00`` …) that get only what RBAC objects grant them;
* ``kubeconfig``: admin kubeconfig (``insecure-skip-tls-verify``) usable by kubernetes_asyncio
  (and by ``kubectl`` if one is at hand);
* ``logs/<component>.log``: each process's output.

Authorization is RBAC only. Identities with chosen rules come from
:meth:`KubeCluster.service_account_identity` (a ServiceAccount whose token the controller
manager's token controller puts in a Secret) and :meth:`KubeCluster.user_identity`.

Nothing here plays the kubelet: see :mod:`tests.support.kubelet`. Pytest fixtures are in
:mod:`tests.support.kube_fixtures`; ``python -m tests.support.kube`` starts a cluster by hand
(see tests/README.md).

Every process is stopped by PID: :meth:`KubeCluster.stop` in order, and an ``atexit`` hook for
whatever a crashed session left.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import new_client_from_config

KUBE_VERSION = "1.20.2"
CACHE_ROOT = Path(os.environ.get("KUBE_TEST_CACHE", "/var/cache/imagewarden-test"))
KUBE_BIN_DIR = CACHE_ROOT / f"kubernetes-{KUBE_VERSION}" / "bin"
"""Where scripts/build-kubernetes.sh installs the control-plane binaries."""
ETCD_BINARY = Path("/usr/bin/etcd")
"""Debian's etcd-server (3.4)."""
CONTROL_PLANE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
NODE_LEASE_NAMESPACE = "kube-node-lease"
TEST_LABEL = "imagewarden.test/namespace"
"""Label on cluster-scoped RBAC objects made for a test namespace (its teardown finds them)."""
USER_GROUP = "imagewarden:test-users"
"""Group of every pooled user (besides ``system:authenticated``)."""

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
APISERVER_STOP_GRACE_SECONDS = 2.0
POLL_INTERVAL_SECONDS = 0.1

Rule = Mapping[str, Any]
"""An RBAC PolicyRule as the API spells it:
``{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}``."""


class KubeBinariesMissingError(RuntimeError):
    """A control-plane binary is missing or is not v1.20.2; the message says how to build it."""


class KubeStartError(RuntimeError):
    """A control-plane process exited or never became ready; the message has its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_live_processes: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_live_processes.values()):
        _terminate(process)


def _terminate(
    process: subprocess.Popen[bytes], grace_seconds: float = STOP_TIMEOUT_SECONDS
) -> None:
    """SIGTERM one process by PID, SIGKILL after ``grace_seconds``; always reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_SECONDS)
    _live_processes.pop(process.pid, None)


@dataclass
class ManagedProcess:
    """One daemon started by a test: output appended to ``log_path``, stopped by its PID."""

    name: str
    """Short name used in messages (``kube-apiserver``)."""
    argv: list[str]
    """Command line."""
    log_path: Path
    """File receiving stdout and stderr (appended across restarts)."""
    env: Mapping[str, str] | None = None
    """Environment; ``None`` inherits the test process's."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """PID of the running process, ``None`` before start or after stop."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process has been started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (a new session, so a terminal's Ctrl-C does not reach it)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                start_new_session=True,
            )
        _live_processes[self.process.pid] = self.process

    def stop(self, grace_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the process by PID, SIGKILL after ``grace_seconds``; no-op when not running."""
        if self.process is not None:
            _terminate(self.process, grace_seconds)
            self.process = None

    def check_alive(self) -> None:
        """Raise :class:`KubeStartError` with the log tail when the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            raise KubeStartError(f"{self.name} exited with status {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the process's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def binary_version(path: Path) -> str | None:
    """``--version`` output of a Kubernetes binary (``Kubernetes v1.20.2``); None if it fails."""
    try:
        result = subprocess.run(
            [str(path), "--version"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.decode(errors="replace").strip() if result.returncode == 0 else None


def check_binaries(bin_dir: Path = KUBE_BIN_DIR, etcd_binary: Path = ETCD_BINARY) -> None:
    """Raise :class:`KubeBinariesMissingError` unless every binary exists and is v1.20.2."""
    problems = []
    for command in CONTROL_PLANE_COMMANDS:
        path = bin_dir / command
        if not path.exists():
            problems.append(f"{path} does not exist")
            continue
        version = binary_version(path)
        if version != f"Kubernetes v{KUBE_VERSION}":
            problems.append(
                f"{path} --version says {version!r}, expected 'Kubernetes v{KUBE_VERSION}'"
            )
    if not etcd_binary.exists():
        problems.append(f"{etcd_binary} does not exist (apt-get install etcd-server)")
    if problems:
        raise KubeBinariesMissingError(
            "the Kubernetes test cluster cannot start: "
            + "; ".join(problems)
            + ". Build them with `bash scripts/build-kubernetes.sh` (~20 min the first time)."
        )


# --- certificates and keys ------------------------------------------------------------------


def _pem_private_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_certificates(cert_dir: Path) -> None:
    """Write ``ca.crt``, ``apiserver.crt``/``.key`` (for 127.0.0.1) and ``sa.key``/``sa.pub``."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagewarden-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    serving_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
    ]
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    (cert_dir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "apiserver.crt").write_bytes(serving_cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "apiserver.key").write_bytes(_pem_private_key(serving_key))
    (cert_dir / "sa.key").write_bytes(_pem_private_key(sa_key))
    (cert_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for private in ("apiserver.key", "sa.key"):
        (cert_dir / private).chmod(0o600)


def kubeconfig_document(server: str, token: str, user_name: str) -> dict[str, Any]:
    """A kubeconfig with one cluster/user/context, bearer token auth, TLS verification off."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "imagewarden-test",
                "cluster": {"server": server, "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": user_name, "user": {"token": token}}],
        "contexts": [
            {
                "name": "imagewarden-test",
                "context": {"cluster": "imagewarden-test", "user": user_name},
            }
        ],
        "current-context": "imagewarden-test",
    }


def write_kubeconfig(path: Path, server: str, token: str, user_name: str) -> Path:
    """Write a kubeconfig (mode 0600) for ``token`` and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig_document(server, token, user_name)))
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def api_client_from_kubeconfig(kubeconfig_path: Path) -> AsyncIterator[ApiClient]:
    """An ApiClient from an explicit kubeconfig file (never $KUBECONFIG); closed on exit."""
    api = await new_client_from_config(config_file=str(kubeconfig_path), persist_config=False)
    try:
        yield api
    finally:
        await api.close()


@dataclass(frozen=True)
class KubeIdentity:
    """Someone the API server knows, with a kubeconfig for them."""

    username: str
    """Name the API server authenticates (``system:serviceaccount:NS:NAME`` or ``user-03``)."""
    token: str
    """Bearer token."""
    kubeconfig_path: Path
    """kubeconfig for this identity (for subprocesses or ``new_client_from_config``)."""

    def client(self) -> contextlib.AbstractAsyncContextManager[ApiClient]:
        """``async with identity.client() as api:`` an ApiClient acting as this identity."""
        return api_client_from_kubeconfig(self.kubeconfig_path)


@dataclass
class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler under ``base_dir``."""

    base_dir: Path
    """All state, certificates, kubeconfigs and logs live here."""
    bin_dir: Path = KUBE_BIN_DIR
    """Directory holding the control-plane binaries."""
    etcd_binary: Path = ETCD_BINARY
    """etcd executable."""
    user_pool_size: int = 32
    """How many plain users (``user-00`` …) the token file provisions for :meth:`user_identity`."""

    api_port: int = 0
    """Secure port of the API server (chosen at start)."""
    etcd_port: int = 0
    """etcd client port (chosen at start)."""
    admin_token: str = field(default="", repr=False)
    """Bearer token of ``admin`` (group ``system:masters``)."""
    user_tokens: dict[str, str] = field(default_factory=dict, repr=False)
    """Pooled plain users: name -> token."""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    """Running components by name (``etcd``, ``kube-apiserver``, …)."""
    started_seconds: float = 0.0
    """How long :meth:`start` took, in seconds."""
    _next_user: int = 0
    _identity_counter: int = 0

    @property
    def server(self) -> str:
        """API server URL, ``https://127.0.0.1:PORT``."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def cert_dir(self) -> Path:
        """Certificates and the ServiceAccount key pair."""
        return self.base_dir / "certs"

    @property
    def kubeconfig_path(self) -> Path:
        """The admin kubeconfig."""
        return self.base_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        """One log file per component."""
        return self.base_dir / "logs"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        """Start all components and wait until the API server is ready and controllers act.

        Raises :class:`KubeBinariesMissingError` or :class:`KubeStartError`; on error every
        process already started is stopped again.
        """
        started = time.monotonic()
        check_binaries(self.bin_dir, self.etcd_binary)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        write_certificates(self.cert_dir)
        self._write_token_file()
        self.etcd_port = free_port()
        self.api_port = free_port()
        deadline = started + timeout_seconds
        try:
            self._start_etcd(deadline)
            self.start_apiserver(timeout_seconds=max(1.0, deadline - time.monotonic()))
            write_kubeconfig(self.kubeconfig_path, self.server, self.admin_token, "admin")
            self._start_controllers()
            self._wait_for_token_controller(deadline)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop every component by PID, controllers first, etcd last."""
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.get(name)
            if process is not None:
                process.stop()

    def stop_apiserver(self, grace_seconds: float = APISERVER_STOP_GRACE_SECONDS) -> None:
        """Stop only the API server (clients see connection errors until it is back).

        It stops listening at once on SIGTERM but then waits for open watches to drain (up to a
        minute); after ``grace_seconds`` it is killed, which cuts every watch as a crash or a
        rollout's shutdown timeout does.
        """
        self.processes["kube-apiserver"].stop(grace_seconds)

    def start_apiserver(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        """(Re)start the API server on the same port and wait for ``/readyz``."""
        process = self.processes.get("kube-apiserver")
        if process is None:
            process = ManagedProcess(
                "kube-apiserver", self._apiserver_argv(), self.log_dir / "kube-apiserver.log"
            )
            self.processes[process.name] = process
        process.start()
        self._wait_ready(process, time.monotonic() + timeout_seconds)

    def restart_apiserver(self, downtime_seconds: float = 0.0) -> None:
        """Stop the API server, stay down ``downtime_seconds``, start it and wait until ready.

        Blocking; from async code run it with ``await asyncio.to_thread(...)`` so watchers keep
        running meanwhile.
        """
        self.stop_apiserver()
        if downtime_seconds > 0:
            time.sleep(downtime_seconds)
        self.start_apiserver()

    # --- clients and identities -----------------------------------------------------------

    def admin_client(self) -> contextlib.AbstractAsyncContextManager[ApiClient]:
        """``async with cluster.admin_client() as api:`` an admin ApiClient from the kubeconfig."""
        return api_client_from_kubeconfig(self.kubeconfig_path)

    def identity_for_token(self, username: str, token: str) -> KubeIdentity:
        """A :class:`KubeIdentity` (and its kubeconfig file) for an existing token."""
        self._identity_counter += 1
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in username)
        path = self.base_dir / "identities" / f"{self._identity_counter:03d}-{safe}.kubeconfig"
        write_kubeconfig(path, self.server, token, username)
        return KubeIdentity(username=username, token=token, kubeconfig_path=path)

    async def service_account_identity(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        *,
        rules: Sequence[Rule] = (),
        cluster_rules: Sequence[Rule] = (),
        timeout_seconds: float = 30.0,
    ) -> KubeIdentity:
        """Create ServiceAccount ``namespace/name`` granted exactly ``rules`` in ``namespace``
        (Role + RoleBinding) and ``cluster_rules`` cluster-wide (ClusterRole + binding, labelled
        for cleanup with the namespace), then return its identity.

        The token comes from the Secret the controller manager's token controller creates.
        """
        core = client.CoreV1Api(api)
        await core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        await grant(api, subject, f"sa-{name}", namespace=namespace, rules=rules)
        if cluster_rules:
            await grant_cluster(
                api,
                subject,
                f"{namespace}-sa-{name}",
                rules=cluster_rules,
                owner_namespace=namespace,
            )
        token = await service_account_token(api, namespace, name, timeout_seconds=timeout_seconds)
        return self.identity_for_token(f"system:serviceaccount:{namespace}:{name}", token)

    async def user_identity(
        self,
        api: ApiClient,
        *,
        namespace: str | None = None,
        rules: Sequence[Rule] = (),
        cluster_rules: Sequence[Rule] = (),
    ) -> KubeIdentity:
        """Take an unused pooled user and grant it ``rules`` in ``namespace`` and ``cluster_rules``.

        Cluster-scoped grants are labelled with ``namespace`` (when given) so the namespace
        fixture's teardown removes them.
        """
        if self._next_user >= len(self.user_tokens):
            raise RuntimeError(
                f"all {len(self.user_tokens)} pooled users are taken; raise user_pool_size"
            )
        username = sorted(self.user_tokens)[self._next_user]
        self._next_user += 1
        subject = {"kind": "User", "name": username, "apiGroup": "rbac.authorization.k8s.io"}
        if rules:
            if namespace is None:
                raise ValueError("namespaced rules need a namespace")
            await grant(api, subject, username, namespace=namespace, rules=rules)
        if cluster_rules:
            await grant_cluster(
                api,
                subject,
                f"imagewarden-test-{username}",
                rules=cluster_rules,
                owner_namespace=namespace,
            )
        return self.identity_for_token(username, self.user_tokens[username])

    # --- internals ------------------------------------------------------------------------

    def _write_token_file(self) -> None:
        self.admin_token = secrets.token_hex(16)
        self.user_tokens = {
            f"user-{index:02d}": secrets.token_hex(16) for index in range(self.user_pool_size)
        }
        lines = [f'{self.admin_token},admin,admin-uid,"system:masters"']
        lines += [
            f'{token},{name},{name}-uid,"{USER_GROUP}"' for name, token in self.user_tokens.items()
        ]
        path = self.base_dir / "tokens.csv"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def _start_etcd(self, deadline: float) -> None:
        peer_port = free_port()
        data_dir = self.base_dir / "etcd"
        process = ManagedProcess(
            "etcd",
            [
                str(self.etcd_binary),
                "--name=imagewarden-test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=imagewarden-test=http://127.0.0.1:{peer_port}",
                # Test data is disposable: skip fsync so API writes are not bound by the disk.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.log_dir / "etcd.log",
        )
        self.processes["etcd"] = process
        process.start()
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        while True:
            process.check_alive()
            if self._etcd_healthy(url):
                return
            if time.monotonic() > deadline:
                raise KubeStartError(f"etcd not healthy in time:\n{process.log_tail()}")
            time.sleep(POLL_INTERVAL_SECONDS)

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_argv(self) -> list[str]:
        certs = self.cert_dir
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            "--insecure-port=0",
            f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--token-auth-file={self.base_dir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--enable-priority-and-fairness=false",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _wait_ready(self, process: ManagedProcess, deadline: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(  # noqa: S310 (loopback https)
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        last = ""
        while True:
            process.check_alive()
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}: {error.read()[-300:]!r}"
            except OSError as error:
                last = str(error)
            if time.monotonic() > deadline:
                raise KubeStartError(
                    f"kube-apiserver not ready in time (last: {last}):\n{process.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)

    def _start_controllers(self) -> None:
        common = [
            f"--kubeconfig={self.kubeconfig_path}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--port=0",
            "--v=1",
        ]
        controller_manager = ManagedProcess(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                *common,
                f"--service-account-private-key-file={self.cert_dir / 'sa.key'}",
                f"--root-ca-file={self.cert_dir / 'ca.crt'}",
                "--use-service-account-credentials=false",
                # Tests drive nodes; react to them quickly.
                "--node-monitor-period=2s",
                "--concurrent-serviceaccount-token-syncs=2",
            ],
            self.log_dir / "kube-controller-manager.log",
        )
        scheduler = ManagedProcess(
            "kube-scheduler",
            [str(self.bin_dir / "kube-scheduler"), *common],
            self.log_dir / "kube-scheduler.log",
        )
        for process in (controller_manager, scheduler):
            self.processes[process.name] = process
            process.start()

    def _wait_for_token_controller(self, deadline: float) -> None:
        """Block until ``default/default`` has a token Secret: the controller manager acts."""

        async def wait() -> None:
            async with self.admin_client() as api:
                await service_account_token(
                    api,
                    "default",
                    "default",
                    timeout_seconds=max(1.0, deadline - time.monotonic()),
                    watch_processes=[self.processes["kube-controller-manager"]],
                )

        # A private event loop in a worker thread: start() is synchronous, and the calling
        # thread's event loop (pytest-asyncio's) must be left alone.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
            executor.submit(asyncio.run, wait()).result()
        self.processes["kube-scheduler"].check_alive()


# --- RBAC and ServiceAccount helpers --------------------------------------------------------


async def grant(
    api: ApiClient,
    subject: Mapping[str, str],
    name: str,
    *,
    namespace: str,
    rules: Iterable[Rule],
) -> None:
    """Create Role ``name`` with ``rules`` in ``namespace`` and bind it to ``subject``."""
    rbac = client.RbacAuthorizationV1Api(api)
    await rbac.create_namespaced_role(
        namespace, {"metadata": {"name": name}, "rules": [dict(rule) for rule in rules]}
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [dict(subject)],
        },
    )


async def grant_cluster(
    api: ApiClient,
    subject: Mapping[str, str],
    name: str,
    *,
    rules: Iterable[Rule],
    owner_namespace: str | None = None,
) -> None:
    """Create ClusterRole ``name`` with ``rules`` and a ClusterRoleBinding to ``subject``.

    With ``owner_namespace`` both carry the :data:`TEST_LABEL` so
    :func:`delete_cluster_grants` removes them with that namespace.
    """
    labels = {TEST_LABEL: owner_namespace} if owner_namespace else {}
    rbac = client.RbacAuthorizationV1Api(api)
    await rbac.create_cluster_role(
        {"metadata": {"name": name, "labels": labels}, "rules": [dict(rule) for rule in rules]}
    )
    await rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [dict(subject)],
        }
    )


async def delete_cluster_grants(api: ApiClient, owner_namespace: str) -> None:
    """Delete ClusterRoles/ClusterRoleBindings labelled for ``owner_namespace``."""
    rbac = client.RbacAuthorizationV1Api(api)
    selector = f"{TEST_LABEL}={owner_namespace}"
    await rbac.delete_collection_cluster_role_binding(label_selector=selector)
    await rbac.delete_collection_cluster_role(label_selector=selector)


async def service_account_token(
    api: ApiClient,
    namespace: str,
    name: str,
    *,
    timeout_seconds: float = 30.0,
    watch_processes: Sequence[ManagedProcess] = (),
) -> str:
    """Wait for the token Secret of ServiceAccount ``namespace/name`` and return the token.

    In 1.20 the controller manager's token controller creates the Secret and lists it in the
    ServiceAccount's ``secrets``.
    """
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_seconds
    last_error = "service account has no token secret yet"
    while True:
        for process in watch_processes:
            process.check_alive()
        try:
            account = await core.read_namespaced_service_account(name, namespace)
            for reference in account.secrets or []:
                secret = await core.read_namespaced_secret(reference.name, namespace)
                if secret.type == "kubernetes.io/service-account-token" and secret.data:
                    token = secret.data.get("token")
                    if token:
                        return base64.b64decode(token).decode()
        except ApiException as error:
            if error.status != 404:
                raise
            last_error = f"{error.status} {error.reason}"
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no token for ServiceAccount {namespace}/{name} after {timeout_seconds:.0f} s "
                f"({last_error}); is kube-controller-manager running with "
                "--service-account-private-key-file?"
            )
        await asyncio.sleep(POLL_INTERVAL_SECONDS)


# --- by hand --------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.support.kube [--dir DIR] [--nodes]``: run a cluster until Ctrl-C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="state directory (default: temp)")
    parser.add_argument(
        "--nodes",
        action="store_true",
        help="also register the simulated nodes (each with its own containerd)",
    )
    options = parser.parse_args(argv)
    base_dir = options.dir or Path(tempfile.mkdtemp(prefix="imagewarden-kube-"))
    cluster = KubeCluster(base_dir.resolve())
    # SIGINT and SIGTERM (even when inherited as ignored, as in a background job) end the
    # wait below, never the process: everything started here must be stopped on the way out.
    # Caught signals revert to their defaults in the children, so they can be stopped by PID.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _interrupt)
    try:
        cluster.start()
        print(f"cluster up in {cluster.started_seconds:.1f} s; API server {cluster.server}")
        print(f"export KUBECONFIG={cluster.kubeconfig_path}")
        print(f"logs: {cluster.log_dir}")
        if options.nodes:
            from tests.support.kubelet import run_nodes_until_signalled

            asyncio.run(run_nodes_until_signalled(cluster, base_dir / "nodes"))
        else:
            print("Ctrl-C stops it")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
