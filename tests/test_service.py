"""The checker service (DESIGN.md contract 4) against real registries.

In-process tests run :func:`imagewarden.service.create_app` behind aiohttp's test server on
127.0.0.1; the SIGTERM and defaults tests run the real ``imagewarden serve`` process. quay.io is
the Hub-like token registry, docker.io the open one (``registries: {host: {endpoint: …}}``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from imagewarden.config import Settings, parse_settings
from imagewarden.metrics import CHECK_REASONS
from imagewarden.service import create_app
from tests.support.images import ImageFactory
from tests.support.registry import RunningRegistry, free_port
from tests.support.registry_fixtures import SeededImages
from tests.support.slowproxy import DelayProxy

TOKEN = "svc-token-3b9f0c1d2e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONTRACT_KEYS = {
    "allowed",
    "image",
    "reference",
    "pinned",
    "digest",
    "reason",
    "platforms",
    "size_bytes",
}
POLICY = {
    "allow": ["quay.io/pangeo/*", "quay.io/jupyter/*", "quay.io/private/*", "docker.io/library/*"],
    "deny": ["quay.io/pangeo/*:latest"],
}

Client = TestClient[web.Request, web.Application]


def make_settings(quay: str, docker: str, **sections: Any) -> Settings:
    """Settings with quay.io and docker.io served by local registries at those URLs."""
    return parse_settings(
        {
            "registries": {"quay.io": {"endpoint": quay}, "docker.io": {"endpoint": docker}},
            "policy": POLICY,
            "profiles": {"gpu": {"platform": "linux/amd64"}, "arm": {"platform": "linux/arm64"}},
            **sections,
        }
    )


@pytest.fixture
async def service(
    token_registry: RunningRegistry, open_registry: RunningRegistry, seeded_images: SeededImages
) -> AsyncIterator[Client]:
    app = create_app(make_settings(token_registry.url, open_registry.url), token=TOKEN)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def check(client: Client, body: object, headers: dict[str, str] = AUTH) -> Any:
    response = await client.post("/api/v1/check", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


# --- verdicts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "profile", "allowed", "code", "in_reason"),
    [
        pytest.param(
            "quay.io/pangeo/pangeo-notebook:2023.09.11", None, True, "ok", "linux/amd64",
            id="multi-arch-tag",
        ),
        pytest.param("ubuntu:22.04", None, True, "ok", "ubuntu:22.04", id="hub-familiar-name"),
        pytest.param(
            "  quay.io/jupyter/base-notebook:2024-01-15 ", "gpu", True, "ok", "linux/amd64",
            id="whitespace-around-gpu-profile",
        ),
        pytest.param(
            "quay.io/pangeo/pangeo-notebook:latest", None, False, "policy", "blocked",
            id="denied-latest",
        ),
        pytest.param(
            "quay.io/evil/miner:1", None, False, "policy", "not in the list of allowed images",
            id="not-allowed",
        ),
        pytest.param(
            "quay.io/pangeo/pangeo-notebook:2099.01.01", None, False, "tag_missing", "2023.09.1",
            id="missing-tag-names-closest",
        ),
        pytest.param(
            "quay.io/jupyter/base-notebook:2024-01-15", "arm", False, "platform", "linux/arm64",
            id="wrong-platform-for-profile",
        ),
        pytest.param(
            "quay.io/private/secret:1", None, False, "not_found", "private", id="private-repo"
        ),
        pytest.param(
            "Quay.io/Pangeo/Notebook", None, False, "invalid_reference", "must be lower-case",
            id="upper-case-path",
        ),
    ],
)  # fmt: skip
async def test_check_answers_200_with_the_verdict(
    service: Client,
    seeded_images: SeededImages,
    image: str,
    profile: str | None,
    allowed: bool,
    code: str,
    in_reason: str,
) -> None:
    verdict = await check(service, {"image": image, "profile": profile})
    assert set(verdict) >= CONTRACT_KEYS
    assert verdict["image"] == image
    assert verdict["allowed"] is allowed, verdict["reason"]
    assert verdict["code"] == code
    assert in_reason.lower() in verdict["reason"].lower()
    if allowed:
        name = verdict["reference"].rsplit(":", 1)[0]
        repo_tag = verdict["reference"].split("/", 1)[1]
        assert verdict["digest"] == seeded_images[repo_tag]
        assert verdict["pinned"] == f"{name}@{verdict['digest']}"
        assert "linux/amd64" in verdict["platforms"]
        amd64 = seeded_images.details[repo_tag].size_bytes["linux/amd64"]
        assert verdict["size_bytes"] == amd64
    else:
        assert verdict["pinned"] is None


async def test_check_reports_every_platform_of_an_index(
    service: Client, seeded_images: SeededImages
) -> None:
    verdict = await check(service, {"image": "quay.io/pangeo/pangeo-notebook:2023.09.12"})
    assert set(verdict["platforms"]) == {"linux/amd64", "linux/arm64/v8"}


# --- malformed and hostile bodies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"", "must be JSON", id="empty"),
        pytest.param(b"image=quay.io/x", "must be JSON", id="not-json"),
        pytest.param(b"\xff\xfe{}", "must be JSON", id="not-utf8"),
        pytest.param(b'["quay.io/pangeo/pangeo-notebook:2023.09.11"]', "JSON object", id="array"),
        pytest.param(b'"quay.io/x"', "JSON object", id="bare-string"),
        pytest.param(b"null", "JSON object", id="null"),
        pytest.param(b'{"profile": "gpu"}', '"image" must be a string', id="missing-image"),
        pytest.param(b'{"image": 5}', '"image" must be a string', id="number-image"),
        pytest.param(b'{"image": null}', '"image" must be a string', id="null-image"),
        pytest.param(b'{"image": ["a", "b"]}', '"image" must be a string', id="list-image"),
        pytest.param(
            b'{"image": {"a": {"b": [1, {"c": null}]}}}', '"image" must be a string',
            id="nested-garbage",
        ),
        pytest.param(b'{"image": "x", "extra": 1}', "Unknown key", id="unknown-key"),
        pytest.param(b'{"image": "x", "' + b"k" * 5000 + b'": 1}', "Unknown key", id="long-key"),
        pytest.param(b'{"image": "x", "profile": 7}', '"profile" must be', id="number-profile"),
        pytest.param(
            b'{"image": "x", "profile": "' + b"p" * 300 + b'"}', '"profile" must be',
            id="long-profile",
        ),
        pytest.param(b"[" * 8000, "must be JSON", id="deeply-nested-arrays"),
        pytest.param(b'{"image":' * 1500, "must be JSON", id="deeply-nested-objects"),
    ],
)  # fmt: skip
async def test_malformed_body_is_400(service: Client, body: bytes, message: str) -> None:
    response = await service.post(
        "/api/v1/check", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert message in error
    assert len(error) < 200  # an echoed key or value is cut short


@pytest.mark.parametrize(
    ("image", "in_reason"),
    [
        pytest.param("q" * 10_000, "10000 characters", id="10kB-image"),
        pytest.param("quay.io/pangeo/pangeo-notebook\x00:2023.09.11", "", id="NUL"),
        pytest.param("quay.io/pangeo/pangeo-notebook:2023.09.11\r\nX-Evil: 1", "", id="CRLF"),
        pytest.param("quay.io/pangeo/\npangeo-notebook", "", id="LF"),
        pytest.param("\ud800quay.io/x", "", id="lone-surrogate"),
        pytest.param("<script>alert(1)</script>", "", id="html"),
        pytest.param("https://quay.io/pangeo/pangeo-notebook", "scheme", id="url"),
    ],
)
async def test_hostile_image_is_a_refusal_not_an_error(
    service: Client, open_registry: RunningRegistry, image: str, in_reason: str
) -> None:
    """A well-formed body with an unusable image is a verdict (200, refused) like any other
    bad image, so the hub shows the reason to the user in both modes; nothing is fetched."""
    since = len(open_registry.request_log())
    verdict = await check(service, {"image": image})
    assert verdict["allowed"] is False
    assert verdict["code"] == "invalid_reference"
    assert in_reason in verdict["reason"]
    assert len(verdict["reason"]) < 600
    assert open_registry.request_log()[since:] == []


async def test_oversized_body_is_413(service: Client) -> None:
    body = json.dumps({"image": "q" * 20_000}).encode()
    response = await service.post(
        "/api/v1/check", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 413
    assert "larger than 16384 bytes" in (await response.json())["error"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token-plus-one"),
        pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="token-prefix"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic-scheme"),
        pytest.param({"Authorization": TOKEN}, id="no-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    ],
)
async def test_check_without_the_token_is_401_and_checks_nothing(
    service: Client, headers: dict[str, str]
) -> None:
    response = await service.post(
        "/api/v1/check", json={"image": "quay.io/pangeo/pangeo-notebook:2023.09.11"},
        headers=headers,
    )  # fmt: skip
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in await response.text()
    metrics = await (await service.get("/metrics")).text()
    assert "imagewarden_checks_total{" not in metrics


async def test_bearer_scheme_is_case_insensitive(service: Client) -> None:
    verdict = await check(
        service, {"image": "quay.io/pangeo/pangeo-notebook:2023.09.11"},
        headers={"Authorization": f"bearer {TOKEN}"},
    )  # fmt: skip
    assert verdict["allowed"] is True


async def test_healthz_and_readyz(service: Client) -> None:
    for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
        response = await service.get(path)
        assert response.status == 200
        assert (await response.json())["status"] == status


# --- metrics -------------------------------------------------------------------------------

EXPECTED_METRICS = {
    # name as the parser reports it (counters without _total) -> type
    "imagewarden_checks": "counter",
    "imagewarden_check_duration_seconds": "histogram",
    "imagewarden_registry_requests": "counter",
    "imagewarden_registry_request_duration_seconds": "histogram",
    "imagewarden_registry_ratelimit_remaining": "gauge",
    "imagewarden_cache_lookups": "counter",
    "imagewarden_prepull_pool_nodes": "gauge",
    "imagewarden_prepull_pool_nodes_warm": "gauge",
    "imagewarden_image_pull_duration_seconds": "histogram",
    "imagewarden_image_pulls": "counter",
    "imagewarden_agent_pull_bytes": "counter",
}


async def test_metrics_expose_the_design_names_with_their_types(service: Client) -> None:
    await check(service, {"image": "quay.io/pangeo/pangeo-notebook:2023.09.10"})
    await check(service, {"image": "quay.io/pangeo/pangeo-notebook:2023.09.10"})
    await check(service, {"image": "quay.io/evil/miner:1"})
    response = await service.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {
        family.name: family for family in text_string_to_metric_families(await response.text())
    }
    assert {name: families[name].type for name in EXPECTED_METRICS if name in families} == (
        EXPECTED_METRICS
    )
    checks = {
        (sample.labels["result"], sample.labels["reason"]): sample.value
        for sample in families["imagewarden_checks"].samples
        if sample.name == "imagewarden_checks_total"
    }
    assert checks == {("allowed", "ok"): 2.0, ("refused", "policy"): 1.0}
    duration_count = [
        sample.value
        for sample in families["imagewarden_check_duration_seconds"].samples
        if sample.name.endswith("_count")
    ]
    assert duration_count == [3.0]
    lookups = {
        sample.labels["result"]: sample.value
        for sample in families["imagewarden_cache_lookups"].samples
        if sample.name.endswith("_total")
    }
    assert lookups["miss"] == 1.0
    assert lookups["hit"] == 1.0
    registry_requests = families["imagewarden_registry_requests"].samples
    assert registry_requests, "registry requests are counted"
    # Bounded labels only: no image name, tag or digest ever becomes a label value.
    for family in families.values():
        for sample in family.samples:
            for value in sample.labels.values():
                assert not any(part in value for part in ("pangeo", "miner", "sha256")), value
            if "reason" in sample.labels:
                assert sample.labels["reason"] in CHECK_REASONS


# --- load: one registry request for a storm of identical checks ----------------------------


async def test_storm_of_500_identical_checks_makes_one_manifest_request(
    open_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    repo, tag = f"storm/notebook-{time.monotonic_ns()}", "1"
    digest = await open_registry.push_async(image_factory.single(salt=repo), repo, tag)
    async with DelayProxy("127.0.0.1", open_registry.port, delay_seconds=0.3) as slow:
        settings = make_settings(slow.url, slow.url, policy={"allow": ["quay.io/storm/*"]})
        app = create_app(settings)
        async with (
            TestServer(app, host="127.0.0.1") as server,
            # Unlimited connections: all 500 are at the server at once, not queued in a pool.
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as storm_session,
            aiohttp.ClientSession() as probe_session,
        ):
            since = len(open_registry.request_log())
            body = {"image": f"quay.io/{repo}:{tag}"}
            check_url, health_url = server.make_url("/api/v1/check"), server.make_url("/healthz")

            async def post() -> tuple[int, Any]:
                async with storm_session.post(check_url, json=body) as response:
                    return response.status, await response.json()

            storm = [asyncio.create_task(post()) for _ in range(500)]
            await slow.holding.wait()  # the storm has reached the registry
            async with probe_session.get(health_url) as health:
                assert health.status == 200
            assert not any(task.done() for task in storm), "/healthz answered during the storm"
            results = await asyncio.gather(*storm)
    assert {status for status, _ in results} == {200}
    assert {(verdict["allowed"], verdict["digest"]) for _, verdict in results} == {(True, digest)}
    log = [record for record in open_registry.request_log()[since:] if repo in record.path]
    assert open_registry.manifest_requests(repo, tag, since=since) == 1, log
    paths = [(record.method, record.path) for record in log]
    assert len(paths) == len(set(paths)), f"a request was repeated: {paths}"


# --- the real process: defaults, access log, SIGTERM ---------------------------------------


def _start_serve(tmp_path: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_file = (tmp_path / "serve.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "imagewarden.cli", "serve", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = _start_serve(tmp_path, args, env or {})
        started.append(process)
        return process

    yield start
    for process in started:
        _stop(process)


async def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{_text(log)}")
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"serve never became ready:\n{_text(log)}")


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def test_serve_without_config_listens_on_loopback_and_allows_quay_and_hub(
    serve_process: Any, tmp_path: Path
) -> None:
    port = free_port()
    process = serve_process(["--port", str(port)], {"IMAGEWARDEN_TOKEN": ""})
    url = f"http://127.0.0.1:{port}"
    await _wait_ready(url, process, tmp_path / "serve.log")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/api/v1/check", json={"image": "ghcr.io/org/x:1"}) as response,
    ):
        verdict = await response.json()
    assert response.status == 200
    assert verdict["allowed"] is False
    assert "allowed: docker.io/**, quay.io/**" in verdict["reason"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


async def test_sigterm_lets_an_in_flight_check_finish(
    serve_process: Any,
    tmp_path: Path,
    open_registry: RunningRegistry,
    seeded_images: SeededImages,
) -> None:
    async with DelayProxy("127.0.0.1", open_registry.port, delay_seconds=1.0) as slow:
        config = tmp_path / "imagewarden.yaml"
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        config.write_text(
            yaml.safe_dump(
                {
                    "registries": {"quay.io": {"endpoint": slow.url}},
                    "checker": {"timeout_seconds": 30},
                    "service": {"token_file": str(token_file)},
                }
            )
        )
        port = free_port()
        process = serve_process(["--config", str(config), "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, process, tmp_path / "serve.log")
        async with aiohttp.ClientSession(headers=AUTH) as session:
            image = "quay.io/pangeo/pangeo-notebook:2023.09.11"
            in_flight = asyncio.create_task(
                session.post(f"{url}/api/v1/check", json={"image": image})
            )
            await slow.holding.wait()  # the check is at the (slow) registry
            process.send_signal(signal.SIGTERM)
            response = await in_flight
            verdict = await response.json()
            response.release()
        exit_code = await asyncio.to_thread(process.wait, 30)
    log = (tmp_path / "serve.log").read_text()
    assert response.status == 200, log
    assert verdict["allowed"] is True
    assert verdict["digest"] == seeded_images["pangeo/pangeo-notebook:2023.09.11"]
    assert exit_code == 0, log
    # JSON access log lines, and never the token.
    access = [json.loads(line[line.index("{") :]) for line in log.splitlines() if '"path"' in line]
    assert {"method": "POST", "path": "/api/v1/check", "status": 200}.items() <= access[-1].items()
    assert TOKEN not in log
