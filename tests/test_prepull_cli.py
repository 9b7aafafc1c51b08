"""``imagewarden prepull render|status`` through the real ``imagewarden`` entry point."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagewarden.cli import main
from imagewarden.prepull.render import NOOP_BINARY_PATH

CONFIG = """
prepull:
  namespace: jhub
  pools:
    cpu:
      nodeSelector: {hub.jupyter.org/node-purpose: user}
      images: [quay.io/pangeo/pangeo-notebook:2023.09.11]
  kubespawner_defaults: {node_selector: {hub.jupyter.org/node-purpose: user}}
  profile_list:
    - display_name: GPU
      slug: gpu
      kubespawner_override:
        image: quay.io/pangeo/ml-notebook:2024.01.18
        node_selector: {hub.jupyter.org/node-purpose: null, cloud.google.com/gke-accelerator: t4}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    - display_name: Scipy
      kubespawner_override: {image: quay.io/jupyter/scipy-notebook:2024-01-01}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "imagewarden.yaml"
    path.write_text(CONFIG)
    return path


def test_render_prints_one_daemonset_per_pool(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepull", "render", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    documents = list(yaml.safe_load_all(out))
    names = [d["metadata"]["name"] for d in documents]
    assert names[0] == "imagewarden-prepull-cpu"
    assert len(names) == 2
    cpu = documents[0]["spec"]["template"]["spec"]
    assert [c["image"] for c in cpu["initContainers"][1:]] == [
        "quay.io/pangeo/pangeo-notebook:2023.09.11",
        "quay.io/jupyter/scipy-notebook:2024-01-01",
    ]
    gpu = documents[1]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"cloud.google.com/gke-accelerator": "t4"}
    assert gpu["containers"][0]["command"] == [NOOP_BINARY_PATH, "--sleep"]
    assert {d["metadata"]["namespace"] for d in documents} == {"jhub"}


def test_render_explain_and_namespace(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["prepull", "render", "--config", str(config_file), "--explain", "--namespace", "other"]
    )
    assert code == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert comments[0].split() == ["#", "PROFILE", "FROM", "IMAGE", "POOL", "NOTE"]
    gpu_row = next(line for line in comments if line.startswith("# gpu "))
    assert "quay.io/pangeo/ml-notebook:2024.01.18" in gpu_row
    assert "t4-" in gpu_row
    scipy_row = next(line for line in comments if line.startswith("# scipy "))
    assert scipy_row.split()[4] == "cpu"
    assert "same nodes as a pool under prepull.pools" in scipy_row
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(out)} == {"other"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "prepull: {pools: {cpu: {images: [ubuntu, 'UPPER/Case']}}}",
            "prepull.pools.cpu.images[1]",
            id="bad-image",
        ),
        pytest.param("prepull: {pools: {cpu: {imgs: []}}}", "prepull.pools.cpu.imgs", id="typo"),
        pytest.param("prepull: [1, 2]", "prepull: must be a mapping", id="not-mapping"),
    ],
)
def test_render_refuses_bad_config_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["prepull", "render", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


class _StatusServer(ThreadingHTTPServer):
    document: Any = None


class _Handler(BaseHTTPRequestHandler):
    server: _StatusServer

    def do_GET(self) -> None:
        body = json.dumps(self.server.document).encode()
        self.send_response(200 if self.path == "/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[_StatusServer]:
    """An HTTP server answering /status with a document the test sets (a canned controller)."""
    server = _StatusServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_status_prints_tables_and_json(
    status_server: _StatusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status_server.document = {
        "identity": "controller-0",
        "leader": True,
        "pools": {
            "gpu": {
                "daemonset": "imagewarden-prepull-gpu",
                "deployed": True,
                "nodes_total": 2,
                "nodes_warm": 1,
                "images": [
                    {
                        "image": "quay.io/pangeo/ml-notebook:2024.01.18",
                        "nodes_warm": 1,
                        "nodes_total": 2,
                        "size_bytes": 7 * 1024**3,
                        "last_pull_duration_seconds": 312.4,
                        "last_pull_node": "gpu-1",
                    }
                ],
            }
        },
    }
    url = f"http://127.0.0.1:{status_server.server_address[1]}"
    assert main(["prepull", "status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "pool gpu: 1/2 nodes warm" in out
    assert "[##########..........]" in out
    assert "7.0 GiB" in out
    assert "312.4s (gpu-1)" in out
    assert main(["prepull", "status", "--url", url, "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == status_server.document


@pytest.mark.parametrize(
    ("url_kind", "message"),
    [
        pytest.param("closed-port", "cannot read the controller's status", id="nothing-listens"),
        pytest.param("file-scheme", "must start with http://", id="file-url"),
    ],
)
def test_status_errors(url_kind: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    if url_kind == "closed-port":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    else:
        url = "file:///etc/passwd"
    assert main(["prepull", "status", "--url", url, "--timeout-seconds", "5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_status_refuses_a_non_object_answer(
    status_server: _StatusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status_server.document = ["not", "a", "status"]
    url = f"http://127.0.0.1:{status_server.server_address[1]}"
    assert main(["prepull", "status", "--url", url]) == 1
    assert "did not answer a JSON object" in capsys.readouterr().err
