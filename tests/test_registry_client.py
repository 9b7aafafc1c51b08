"""The registry client and checker against the real CNCF distribution registry.

quay.io- and docker.io-named references are driven through the local registries by endpoint
overrides, so the Hub/quay code paths (token auth, "does not exist or is private") run for real.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagewarden.checker import Checker
from imagewarden.config import Settings, parse_settings
from imagewarden.errors import (
    CredentialsRefusedError,
    PlatformNotFoundError,
    RepositoryNotFoundError,
    TagNotFoundError,
)
from imagewarden.metrics import Metrics
from imagewarden.reference import parse
from imagewarden.registry import RegistryClient
from tests.support.registry import RunningRegistry
from tests.support.registry_fixtures import PRIVATE_REPO, SeededImages


def settings_for(registry: RunningRegistry, **extra: Any) -> Settings:
    """quay.io and docker.io both served by ``registry``."""
    document: dict[str, Any] = {
        "registries": {
            "quay.io": {"endpoint": registry.url},
            "docker.io": {"endpoint": registry.url},
        }
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key].update(value)
        else:
            document[key] = value
    return parse_settings(document)


@pytest.fixture
async def token_client(token_registry: RunningRegistry) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(settings_for(token_registry)) as client:
        yield client


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("pangeo/pangeo-notebook:2023.09.11", id="oci-index"),
        pytest.param("pangeo/pangeo-notebook:latest", id="oci-index-latest"),
        pytest.param("jupyter/base-notebook:2024-01-15", id="oci-single"),
        pytest.param("docker/v2s2:1", id="docker-schema2"),
        pytest.param("docker/v2s2-list:1", id="docker-manifest-list"),
    ],
)
@pytest.mark.parametrize("registry_name", ["open_registry", "token_registry"])
async def test_resolves_the_digest_skopeo_reports(
    request: pytest.FixtureRequest, registry_name: str, name: str, seeded_images: SeededImages
) -> None:
    registry: RunningRegistry = request.getfixturevalue(registry_name)
    repo, tag = name.split(":")
    async with RegistryClient(settings_for(registry)) as client:
        resolution = await client.resolve(parse(f"quay.io/{name}"))
    seeded = seeded_images.details[name]
    assert resolution.digest == registry.inspect_digest(repo, tag)
    assert resolution.platform_digest == seeded.platform_digests["linux/amd64"]
    assert resolution.size_bytes == seeded.size_bytes["linux/amd64"]
    assert [p.split("/")[1] for p in resolution.platforms] == [
        p.split("/")[1] for p in seeded.platforms
    ]


async def test_docker_hub_short_names_resolve_under_library(
    token_client: RegistryClient, seeded_images: SeededImages
) -> None:
    resolution = await token_client.resolve(parse("ubuntu:22.04"))
    assert resolution.digest == seeded_images["library/ubuntu:22.04"]
    assert resolution.platforms == ("linux/amd64", "linux/arm64/v8")


async def test_arm64_variant_is_selected_for_an_arm64_profile(
    token_client: RegistryClient, seeded_images: SeededImages
) -> None:
    resolution = await token_client.resolve(parse("ubuntu:22.04"), platform="linux/arm64")
    seeded = seeded_images.details["library/ubuntu:22.04"]
    assert resolution.platform_digest == seeded.platform_digests["linux/arm64"]


async def test_missing_tag_names_the_closest_existing_tags(
    token_client: RegistryClient, seeded_images: SeededImages
) -> None:
    with pytest.raises(TagNotFoundError) as caught:
        await token_client.resolve(parse("quay.io/pangeo/pangeo-notebook:2023.09.1"))
    assert set(caught.value.suggestions) == {"2023.09.10", "2023.09.11", "2023.09.12"}
    assert "has no tag '2023.09.1'; did you mean 2023.09.1" in str(caught.value)
    assert not caught.value.temporary


async def test_missing_digest_is_refused_without_suggestions(
    token_client: RegistryClient, seeded_images: SeededImages
) -> None:
    missing = "sha256:" + "0" * 64
    with pytest.raises(TagNotFoundError, match="no manifest with that digest"):
        await token_client.resolve(parse(f"quay.io/pangeo/pangeo-notebook@{missing}"))


@pytest.mark.parametrize(
    "image",
    [
        pytest.param("quay.io/pangeo/does-not-exist:1", id="missing-repository"),
        pytest.param(f"quay.io/{PRIVATE_REPO}:1", id="private-repository"),
    ],
)
async def test_anonymous_401_says_does_not_exist_or_is_private(
    token_client: RegistryClient, seeded_images: SeededImages, image: str
) -> None:
    with pytest.raises(RepositoryNotFoundError, match="does not exist or is private"):
        await token_client.resolve(parse(image))


async def test_missing_repository_on_an_open_registry_says_it_does_not_exist(
    open_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    async with RegistryClient(settings_for(open_registry)) as client:
        with pytest.raises(RepositoryNotFoundError, match="does not exist; check the spelling"):
            await client.resolve(parse("quay.io/nobody/nothing:1"))


def _password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "password"
    path.write_text(password + "\n")
    return str(path)


async def test_private_repository_with_credentials_from_config(
    token_registry: RunningRegistry, seeded_images: SeededImages, tmp_path: Path
) -> None:
    assert token_registry.credentials is not None
    user, password = token_registry.credentials
    settings = settings_for(
        token_registry,
        registries={
            "quay.io": {
                "endpoint": token_registry.url,
                "username": user,
                "password_file": _password_file(tmp_path, password),
            }
        },
    )
    async with RegistryClient(settings) as client:
        resolution = await client.resolve(parse(f"quay.io/{PRIVATE_REPO}:1"))
    assert resolution.digest == seeded_images[f"{PRIVATE_REPO}:1"]


async def test_private_repository_with_a_docker_config_json(
    token_registry: RunningRegistry, seeded_images: SeededImages, tmp_path: Path
) -> None:
    import base64

    assert token_registry.credentials is not None
    auth = base64.b64encode(":".join(token_registry.credentials).encode()).decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"quay.io": {"auth": auth}}}))
    settings = settings_for(token_registry, credentials={"dockerconfigjson_files": [str(config)]})
    async with RegistryClient(settings) as client:
        resolution = await client.resolve(parse(f"quay.io/{PRIVATE_REPO}:1"))
        assert client.credentials_for("quay.io") == token_registry.credentials
        assert client.credentials_for("docker.io") is None
    assert resolution.digest == seeded_images[f"{PRIVATE_REPO}:1"]


async def test_wrong_credentials_are_reported_as_refused(
    token_registry: RunningRegistry, seeded_images: SeededImages, tmp_path: Path
) -> None:
    settings = settings_for(
        token_registry,
        registries={
            "quay.io": {
                "endpoint": token_registry.url,
                "username": "reader",
                "password_file": _password_file(tmp_path, "wrong"),
            }
        },
    )
    async with RegistryClient(settings) as client:
        with pytest.raises(CredentialsRefusedError, match="refused the hub's credentials"):
            await client.resolve(parse(f"quay.io/{PRIVATE_REPO}:1"))


async def test_basic_auth_registry_needs_and_uses_credentials(
    htpasswd_registry: RunningRegistry, image_factory: Any, tmp_path: Path
) -> None:
    digest = htpasswd_registry.push(image_factory.single(salt="basic-auth"), "team/app", "1")
    host = htpasswd_registry.host
    image = f"{host}/team/app:1"
    anonymous = parse_settings(
        {
            "registries": {host: {"endpoint": htpasswd_registry.url}},
            "policy": {"allow": [f"{host}/**"]},
        }
    )
    async with RegistryClient(anonymous) as client:
        with pytest.raises(RepositoryNotFoundError, match="does not exist or is private"):
            await client.resolve(parse(image))
    assert htpasswd_registry.credentials is not None
    user, password = htpasswd_registry.credentials
    with_credentials = parse_settings(
        {
            "registries": {
                host: {
                    "endpoint": htpasswd_registry.url,
                    "username": user,
                    "password_file": _password_file(tmp_path, password),
                }
            },
            "policy": {"allow": [f"{host}/**"]},
        }
    )
    async with RegistryClient(with_credentials) as client:
        assert (await client.resolve(parse(image))).digest == digest


async def test_arm64_only_image_is_refused_on_an_amd64_profile(
    token_client: RegistryClient, seeded_images: SeededImages
) -> None:
    with pytest.raises(PlatformNotFoundError) as caught:
        await token_client.resolve(parse("quay.io/arm/only-arm:1"), platform="linux/amd64")
    assert caught.value.platforms == ("linux/arm64/v8",)
    assert "is not built for linux/amd64 (it offers linux/arm64/v8)" in str(caught.value)


async def test_tokens_are_reused_within_a_repository(
    token_registry: RunningRegistry, token_client: RegistryClient, seeded_images: SeededImages
) -> None:
    assert token_registry.token_server is not None
    await token_client.resolve(parse("quay.io/pangeo/pangeo-notebook:2023.09.10"))
    before = token_registry.token_server.token_requests
    await token_client.resolve(parse("quay.io/pangeo/pangeo-notebook:2023.09.12"))
    await token_client.resolve(parse("quay.io/pangeo/pangeo-notebook:2023.09.11"))
    assert token_registry.token_server.token_requests == before


async def test_head_first_and_digest_documents_are_fetched_once(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    repo, tag = "pangeo/pangeo-notebook", "2023.09.10"
    digest = seeded_images[f"{repo}:{tag}"]
    since = len(token_registry.request_log())
    async with RegistryClient(settings_for(token_registry)) as client:
        for _ in range(3):
            await client.resolve(parse(f"quay.io/{repo}:{tag}"))
    log = [r for r in token_registry.request_log()[since:] if r.status == 200]
    assert [r.method for r in log if r.path == f"/v2/{repo}/manifests/{tag}"] == ["HEAD"] * 3
    assert [r.method for r in log if r.path == f"/v2/{repo}/manifests/{digest}"] == ["GET"]


# --- the checker on top of the client -------------------------------------------------------


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A port that accepts connections: a check that reaches it is a policy failure."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    try:
        yield server
    finally:
        server.close()


def _accepted(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


async def test_refused_names_never_open_a_connection(listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    host = f"127.0.0.1:{port}"
    settings = parse_settings(
        {
            "registries": {host: {"endpoint": f"http://{host}"}},
            "policy": {"allow": [f"{host}/allowed/*"]},
        }
    )
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client, metrics=client.metrics)
        for image in (f"{host}/other/x:1", f"{host}/allowed/x/y:1", f"{host}/allowedx/y:1"):
            verdict = await checker.check(image)
            assert (verdict.allowed, verdict.code) == (False, "policy"), image
    await asyncio.sleep(0.05)
    assert _accepted(listening_socket) == 0


async def test_unreachable_registry_is_refused_within_the_budget() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    settings = parse_settings(
        {
            "registries": {"quay.io": {"endpoint": f"http://127.0.0.1:{port}"}},
            "checker": {"timeout_seconds": 2},
        }
    )
    async with RegistryClient(settings) as client:
        started = time.monotonic()
        verdict = await Checker(settings, client).check("quay.io/pangeo/pangeo-notebook:1")
    assert time.monotonic() - started < 2.5
    assert (verdict.allowed, verdict.code) == (False, "registry_unavailable")
    assert "quay.io could not be reached (connection refused)" in verdict.reason


async def test_concurrent_identical_checks_share_one_registry_request(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    repo, tag = "pangeo/pangeo-notebook", "2023.09.12"
    settings = settings_for(token_registry)
    metrics = Metrics()
    async with RegistryClient(settings, metrics=metrics) as client:
        # Warm the repository's pull token, so the storm's only request is the manifest's.
        await client.resolve(parse(f"quay.io/{repo}:2023.09.10"))
        since = len(token_registry.request_log())
        checker = Checker(settings, client, metrics=metrics)
        image = f"quay.io/{repo}:{tag}"
        verdicts = await asyncio.gather(*(checker.check(image) for _ in range(200)))
    assert {v.pinned for v in verdicts} == {f"quay.io/{repo}@{seeded_images[f'{repo}:{tag}']}"}
    assert token_registry.manifest_requests(repo, tag, since=since) == 1
    coalesced = metrics.registry.get_sample_value(
        "imagewarden_cache_lookups_total", {"result": "coalesced"}
    )
    assert coalesced == 199


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_ttl_then_stale_if_error_when_the_registry_is_down(
    image_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.support.registry import start_registry

    registry = start_registry(tmp_path_factory.mktemp("stale-registry"), mode="open")
    try:
        registry.push(image_factory.single(salt="stale"), "org/app", "1")
        clock = FakeClock()
        settings = settings_for(
            registry, checker={"tag_ttl_seconds": 60, "stale_if_error_seconds": 600}
        )
        async with RegistryClient(settings) as client:
            checker = Checker(settings, client, clock=clock)
            first = await checker.check("quay.io/org/app:1")
            assert first.allowed
            assert not first.stale
            since = len(registry.request_log())
            clock.now += 30
            assert (await checker.check("quay.io/org/app:1")).pinned == first.pinned
            assert registry.manifest_requests("org/app", "1", since=since) == 0
            registry.stop()
            clock.now += 60
            stale = await checker.check("quay.io/org/app:1")
            assert (stale.allowed, stale.stale, stale.code) == (True, True, "stale")
            assert stale.pinned == first.pinned
            clock.now += 600
            gone = await checker.check("quay.io/org/app:1")
            assert (gone.allowed, gone.code) == (False, "registry_unavailable")
    finally:
        registry.close()


async def test_missing_tags_are_cached_for_the_shorter_ttl(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    clock = FakeClock()
    settings = settings_for(token_registry, checker={"miss_ttl_seconds": 10})
    repo = "pangeo/pangeo-notebook"
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client, clock=clock)
        await client.resolve(parse(f"quay.io/{repo}:2023.09.10"))  # warms the pull token
        since = len(token_registry.request_log())
        for _ in range(3):
            assert (await checker.check(f"quay.io/{repo}:nope")).code == "tag_missing"
        assert token_registry.manifest_requests(repo, "nope", since=since) == 1
        clock.now += 11
        await checker.check(f"quay.io/{repo}:nope")
        assert token_registry.manifest_requests(repo, "nope", since=since) == 2


@pytest.mark.parametrize(
    "typed",
    [
        pytest.param("ubuntu:22.04", id="short"),
        pytest.param("Docker.IO/ubuntu:22.04", id="upper-case-host"),
        pytest.param("index.docker.io/library/ubuntu:22.04", id="legacy-index-host"),
        pytest.param("registry-1.docker.io/ubuntu:22.04", id="registry-1-host"),
        pytest.param("  docker.io/library/ubuntu:22.04\n", id="surrounding-whitespace"),
    ],
)
async def test_every_spelling_is_pinned_to_the_canonical_name(
    token_registry: RunningRegistry, seeded_images: SeededImages, typed: str
) -> None:
    settings = settings_for(token_registry)
    async with RegistryClient(settings) as client:
        verdict = await Checker(settings, client).check(typed)
    digest = seeded_images["library/ubuntu:22.04"]
    assert verdict.allowed, verdict.reason
    assert verdict.image == typed
    assert verdict.reference == "docker.io/library/ubuntu:22.04"
    assert verdict.pinned == f"docker.io/library/ubuntu@{digest}"
