"""``imagewarden agent`` as an operator runs it: a process, its exit codes, its endpoint, its bars.

Each test starts the real command line (the installed ``imagewarden`` entry point) against
podman's Docker API service and the fixture registry, and looks at what a person or a
Prometheus server would: exit code and stderr, ``/status`` and ``/metrics`` over HTTP, the
``--status-file``, and the terminal output when stderr is a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.agent_fixtures import registry_entry, registry_proxy, write_agent_config
from tests.support.images import ImageFactory, OciImage
from tests.support.podman import PodmanService
from tests.support.registry import RunningRegistry, free_port

AGENT = [sys.executable, "-m", "imagewarden.cli", "agent"]
LAYER_SIZES = (200_000, 100_000)


def _run(args: Sequence[str], timeout_seconds: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *args], capture_output=True, text=True, timeout=timeout_seconds, check=False
    )


def _push_pool(
    registry: RunningRegistry, factory: ImageFactory, salt: str, count: int
) -> dict[str, OciImage]:
    images = {}
    for index in range(count):
        image = factory.build(layer_sizes=LAYER_SIZES, salt=f"{salt}:{index}:{time.time_ns()}")
        reference = registry.reference(f"agent-cli/{salt}-{index}", "1")
        registry.push(image, f"agent-cli/{salt}-{index}", "1")
        images[reference] = image
    return images


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return response.status, response.read().decode()


@pytest.fixture
def stopped_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; each is stopped by PID afterwards, even on failure."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--pool", "nope"], "no pool named 'nope'; known pools: cpu, gpu", id="pool"),
        pytest.param(["--pool", "cpu", "--parallel", "0"], "must be at least 1", id="parallel"),
        pytest.param(["--pool", "cpu", "--interval", "-5"], "positive number", id="interval"),
        pytest.param(["--pool", "cpu", "--interval", "nan"], "positive number", id="nan"),
        pytest.param(["--pool", "cpu", "--listen-port", "70000"], "0-65535", id="port"),
        pytest.param(["--pool", "cpu", "--engine", "rkt"], "invalid choice", id="engine"),
        pytest.param(["--pool", "cpu", "--retries", "-1"], "must not be negative", id="retries"),
    ],
)
def test_bad_arguments_exit_2_with_the_rule(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": ["127.0.0.1:1/a/b:1"], "gpu": ["127.0.0.1:1/a/c:1"]},
        registries={"127.0.0.1:1": ("http://127.0.0.1:1", None)},
    )
    result = _run([*args, "--config", str(config), "--once", "--no-listen"])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_invalid_image_in_pool_is_a_config_error_naming_its_key(tmp_path: Path) -> None:
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": ["127.0.0.1:1/ok/image:1", "127.0.0.1:1/Bad/Upper:1"]},
        registries={"127.0.0.1:1": ("http://127.0.0.1:1", None)},
    )
    result = _run(["--pool", "cpu", "--config", str(config), "--once", "--no-listen"])
    assert result.returncode == 2
    assert "prepull.pools.cpu.images[1]" in result.stderr


def test_once_pulls_writes_status_and_a_second_run_pulls_nothing(
    podman_service: PodmanService,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    images = _push_pool(open_registry, image_factory, "once", 3)
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": list(images)},
        registries=dict([registry_entry(open_registry)]),
    )
    status_file = tmp_path / "status.json"
    args = [
        "--pool", "cpu", "--config", str(config), "--engine-socket", podman_service.base_url,
        "--once", "--no-listen", "--progress", "never", "--status-file", str(status_file),
    ]  # fmt: skip
    first = _run(args)
    assert first.returncode == 0, first.stderr
    status = json.loads(status_file.read_text())
    assert (status["wanted"], status["present"]) == (3, 3)
    for entry in status["images"]:
        image = images[entry["image"]]
        assert entry["digest"] == image.digest
        assert entry["last_pull_bytes"] == image.manifest_for("linux/amd64").size_bytes
        assert entry["state"] == "present"
    assert "pulled 127.0.0.1" in first.stderr  # one log line per pull

    second = _run(args)
    assert second.returncode == 0, second.stderr
    status = json.loads(status_file.read_text())
    assert [entry["last_pull_bytes"] for entry in status["images"]] == [None, None, None]
    assert "0 pulled, 3 already present" in second.stderr


def test_once_exits_1_when_an_image_cannot_be_had(
    podman_service: PodmanService, open_registry: RunningRegistry, tmp_path: Path
) -> None:
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": [open_registry.reference("agent-cli/never-pushed", "1")]},
        registries=dict([registry_entry(open_registry)]),
    )
    result = _run(
        ["--pool", "cpu", "--config", str(config), "--engine-socket", podman_service.base_url,
         "--once", "--no-listen"]
    )  # fmt: skip
    assert result.returncode == 1
    assert "agent-cli/never-pushed" in result.stderr


def test_missing_engine_exits_1_naming_the_socket(
    open_registry: RunningRegistry, tmp_path: Path
) -> None:
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": [open_registry.reference("agent-cli/whatever", "1")]},
        registries=dict([registry_entry(open_registry)]),
    )
    socket_path = tmp_path / "absent.sock"
    result = _run(
        ["--pool", "cpu", "--config", str(config), "--engine-socket", str(socket_path),
         "--once", "--no-listen"]
    )  # fmt: skip
    assert result.returncode == 1
    assert str(socket_path) in result.stderr


def _wait_for(check: object, timeout_seconds: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout_seconds
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
        except OSError:
            last = {}
        if last.get("done"):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out; last seen: {last}")


def test_daemon_serves_status_and_metrics_follows_a_moved_tag_and_stops_on_sigterm(
    podman_service: PodmanService,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
    stopped_processes: list[subprocess.Popen[bytes]],
) -> None:
    images = _push_pool(open_registry, image_factory, "daemon", 2)
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": list(images)},
        registries=dict([registry_entry(open_registry)]),
    )
    port = free_port()
    process = subprocess.Popen(
        [*AGENT, "--pool", "cpu", "--config", str(config),
         "--engine-socket", podman_service.base_url, "--interval", "1",
         "--listen-port", str(port), "--progress", "never"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "agent.log").open("wb"),
    )  # fmt: skip
    stopped_processes.append(process)
    base = f"http://127.0.0.1:{port}"

    def all_present() -> dict[str, object]:
        status = json.loads(_get(f"{base}/status")[1])
        return {"done": status["present"] == 2 and status["rounds"] >= 1, "status": status}

    status = _wait_for(all_present)["status"]
    assert isinstance(status, dict)
    assert status["engine_version"].startswith("Podman Engine")
    code, metrics = _get(f"{base}/metrics")
    assert code == 200
    total = sum(image.manifest_for("linux/amd64").size_bytes for image in images.values())
    assert f'imagewarden_agent_pull_bytes_total{{pool="cpu"}} {float(total)}' in metrics
    assert 'imagewarden_agent_images_present{pool="cpu"} 2.0' in metrics
    assert 'imagewarden_agent_images_wanted{pool="cpu"} 2.0' in metrics
    assert 'imagewarden_image_pulls_total{pool="cpu",result="success"} 2.0' in metrics
    assert _get(f"{base}/healthz")[0] == 200

    # The first image's tag moves; the next re-check pulls the new digest.
    moved_reference = next(iter(images))
    repo = moved_reference.split("/", 1)[1].rsplit(":", 1)[0]
    moved = image_factory.build(layer_sizes=LAYER_SIZES, salt=f"moved:{time.time_ns()}")
    open_registry.push(moved, repo, "1")

    def moved_and_present() -> dict[str, object]:
        entry = json.loads(_get(f"{base}/status")[1])["images"][0]
        return {"done": entry["digest"] == moved.digest and entry["state"] == "present"}

    _wait_for(moved_and_present)
    assert (
        podman_service.cli(
            "image", "exists", f"{moved_reference.rsplit(':', 1)[0]}@{moved.digest}", check=False
        ).returncode
        == 0
    )

    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


def test_terminal_shows_one_bar_per_image_with_bytes_and_rate(
    podman_service: PodmanService,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
    stopped_processes: list[subprocess.Popen[bytes]],
) -> None:
    images = _push_pool(open_registry, image_factory, "tty", 2)
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": list(images)},
        registries=dict([registry_entry(open_registry)]),
    )
    controller, terminal = pty.openpty()
    env = dict(os.environ, COLUMNS="150", LINES="30", TERM="xterm-256color")
    process = subprocess.Popen(
        [*AGENT, "--pool", "cpu", "--config", str(config),
         "--engine-socket", podman_service.base_url, "--once", "--no-listen"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env,
    )  # fmt: skip
    stopped_processes.append(process)
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    text = screen.decode(errors="replace")
    assert process.wait(30) == 0, text
    for reference in images:
        assert reference in text  # familiar name of a non-Hub image is the full name
    assert "\x1b[" in text  # drawn with terminal control sequences, i.e. live
    assert "kB/s" in text or "MB/s" in text or "B/s" in text
    assert "KiB" in text  # DownloadColumn with binary units: bytes done / total


@pytest.mark.parametrize("engine", ["docker", "cri"])
def test_sigterm_during_a_stalled_pull_stops_the_agent_promptly(
    request: pytest.FixtureRequest,
    engine: str,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
    stopped_processes: list[subprocess.Popen[bytes]],
) -> None:
    images = _push_pool(open_registry, image_factory, f"sigterm-{engine}", 1)
    with registry_proxy(open_registry) as proxy:
        if engine == "docker":
            address = request.getfixturevalue("podman_service").base_url
        else:
            node = request.getfixturevalue("containerd_node")
            node.add_registry(proxy.host, proxy.url)
            address = node.address
        repo = next(iter(images)).split("/", 1)[1].rsplit(":", 1)[0]
        proxy.stalled_repos = {repo}
        config = write_agent_config(
            tmp_path / "config.yaml",
            pools={"cpu": [f"{proxy.host}/{repo}:1"]},
            registries={proxy.host: (proxy.url, None)},
        )
        process = subprocess.Popen(
            [*AGENT, "--pool", "cpu", "--config", str(config), "--engine", engine,
             "--engine-socket", address, "--no-listen", "--progress", "never"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stopped_processes.append(process)
        assert proxy.wait_for_stall(60), "the pull never reached the registry"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert time.monotonic() - started < 10


def test_port_in_use_exits_2_naming_it(tmp_path: Path) -> None:
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": ["127.0.0.1:1/a/b:1"]},
        registries={"127.0.0.1:1": ("http://127.0.0.1:1", None)},
    )
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _run(
            ["--pool", "cpu", "--config", str(config), "--once", "--listen-port", str(port),
             "--engine-socket", str(tmp_path / "unused.sock")]
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
