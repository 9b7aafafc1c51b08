"""Tests of the registry test infrastructure itself (tests/support/registry*.py, images.py).

Other tests trust these fixtures to tell the truth about what a registry holds, so here
each claim is checked against an independent tool: ``skopeo inspect`` for digests,
plain HTTP for auth behaviour, and the registry's access log for request counts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from tests.support.images import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageFactory,
)
from tests.support.registry import (
    MANIFEST_ACCEPT,
    LoggedRequest,
    RunningRegistry,
    http_request,
    require_binary,
)
from tests.support.registry_fixtures import PRIVATE_REPO, SeededImages
from tests.support.schema1 import SCHEMA1_SIGNED, SCHEMA1_UNSIGNED, Schema1Registry
from tests.support.tokenserver import TokenFault


def _skopeo_inspect(
    registry: RunningRegistry,
    reference: str,
    *,
    creds: tuple[str, str] | None = None,
    raw: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    command = ["skopeo", "inspect", "--tls-verify=false"]
    if raw:
        command.append("--raw")
    if creds is not None:
        command += ["--creds", f"{creds[0]}:{creds[1]}"]
    else:
        command.append("--no-creds")
    command.append(f"docker://{registry.host}/{reference}")
    return subprocess.run(command, capture_output=True, timeout=60, check=False)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return http_request("GET", url, headers)


def _layer_names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return tar.getnames()


# -- images -------------------------------------------------------------------------


def test_same_arguments_give_same_digests_and_salt_changes_them(
    image_factory: ImageFactory,
) -> None:
    first = image_factory.multi_platform()
    again = image_factory.multi_platform()
    salted = image_factory.multi_platform(salt="other")
    assert first.digest == again.digest
    assert salted.digest != first.digest
    assert first.platforms == ["linux/amd64", "linux/arm64"]
    assert first.media_type == OCI_INDEX


def test_layout_blobs_match_their_digests_and_sizes(image_factory: ImageFactory) -> None:
    image = image_factory.build(layer_sizes=(10_000, 50_000), salt="sizes")
    manifest = image.manifest_for("linux/amd64")
    for descriptor in (manifest.config, *manifest.layers):
        blob = (image.layout_dir / "blobs" / "sha256" / descriptor.digest[7:]).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == descriptor.digest
        assert len(blob) == descriptor.size_bytes
    # Pseudo-random payloads do not compress: compressed sizes track requested sizes.
    for layer, size in zip(manifest.layers[:2], (10_000, 50_000), strict=True):
        assert layer.size_bytes > size
    assert manifest.size_bytes > 60_000


def test_busybox_image_has_shell_and_no_shell_image_has_none(image_factory: ImageFactory) -> None:
    runnable = image_factory.with_busybox()
    bare = image_factory.no_shell()
    runnable_names = [
        name
        for layer in runnable.manifest_for("linux/amd64").layers
        for name in _layer_names(
            (runnable.layout_dir / "blobs/sha256" / layer.digest[7:]).read_bytes()
        )
    ]
    bare_names = [
        name
        for layer in bare.manifest_for("linux/amd64").layers
        for name in _layer_names((bare.layout_dir / "blobs/sha256" / layer.digest[7:]).read_bytes())
    ]
    assert {"bin/busybox", "bin/sh"} <= set(runnable_names)
    assert runnable.has_shell
    assert not any(name.startswith("bin/") for name in bare_names)
    assert not bare.has_shell


def test_arm64_only_image_lists_only_arm64(image_factory: ImageFactory) -> None:
    image = image_factory.arm64_only()
    assert image.platforms == ["linux/arm64"]
    assert image.is_index
    with pytest.raises(KeyError, match="no platform"):
        image.manifest_for("linux/amd64")


# -- pushing ------------------------------------------------------------------------


def test_push_returns_the_digest_skopeo_inspect_reports(
    open_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    image = image_factory.single(salt="push-digest")
    digest = open_registry.push(image, "infra/single", "v1")
    inspected = _skopeo_inspect(open_registry, "infra/single:v1")
    assert inspected.returncode == 0, inspected.stderr
    assert digest == "sha256:" + hashlib.sha256(inspected.stdout).hexdigest()
    assert digest == image.digest  # OCI in, OCI out: skopeo does not rewrite the manifest
    formatted = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            f"docker://{open_registry.host}/infra/single:v1",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert formatted.stdout.decode().strip() == digest


def test_push_multi_platform_returns_index_digest(
    open_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    image = image_factory.multi_platform(salt="push-index")
    digest = open_registry.push(image, "infra/multi", "v1")
    raw = open_registry.inspect_raw("infra/multi", "v1")
    assert digest == image.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert json.loads(raw)["mediaType"] == OCI_INDEX


def test_push_docker_v2s2_converts_media_types(
    open_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    single = open_registry.push(image_factory.single(salt="v2"), "infra/v2", "1", docker_v2s2=True)
    multi = open_registry.push(
        image_factory.multi_platform(salt="v2l"), "infra/v2", "list", docker_v2s2=True
    )
    assert json.loads(open_registry.inspect_raw("infra/v2", "1"))["mediaType"] == DOCKER_MANIFEST_V2
    assert json.loads(open_registry.inspect_raw("infra/v2", "list"))["mediaType"] == (
        DOCKER_MANIFEST_LIST
    )
    assert open_registry.inspect_digest("infra/v2", "1") == single
    assert open_registry.inspect_digest("infra/v2", "list") == multi


def test_pushing_another_image_moves_the_tag(
    open_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    before = open_registry.push(image_factory.single(salt="move-1"), "infra/moving", "latest")
    after = open_registry.push(image_factory.single(salt="move-2"), "infra/moving", "latest")
    assert before != after
    assert open_registry.inspect_digest("infra/moving", "latest") == after


def test_delete_tag_removes_it(open_registry: RunningRegistry, image_factory: ImageFactory) -> None:
    digest = open_registry.push(image_factory.single(salt="delete-me"), "infra/deleted", "1")
    assert open_registry.delete_tag("infra/deleted", "1") == digest
    assert open_registry.manifest_digest("infra/deleted", "1") is None
    assert _skopeo_inspect(open_registry, "infra/deleted:1").returncode != 0


# -- request log --------------------------------------------------------------------


def test_request_log_counts_one_head(
    open_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    digest = open_registry.push(image_factory.single(salt="log-head"), "infra/logged", "1")
    since = len(open_registry.request_log())
    status, headers, _ = http_request(
        "HEAD", f"{open_registry.url}/v2/infra/logged/manifests/1", {"Accept": MANIFEST_ACCEPT}
    )
    assert status == 200
    assert headers["docker-content-digest"] == digest
    new = open_registry.request_log()[since:]
    assert new == [LoggedRequest("HEAD", "/v2/infra/logged/manifests/1", 200)]
    assert open_registry.manifest_requests("infra/logged", "1", since=since) == 1
    assert open_registry.manifest_requests("infra/logged", "1", ("GET",), since=since) == 0


def test_restart_keeps_port_and_storage(tmp_path: Path, image_factory: ImageFactory) -> None:
    from tests.support.registry import start_registry

    registry = start_registry(tmp_path / "restart", mode="open")
    try:
        digest = registry.push(image_factory.single(salt="restart"), "infra/restart", "1")
        port, pid = registry.port, registry.pid
        registry.restart()
        assert registry.port == port
        assert registry.pid != pid
        assert registry.inspect_digest("infra/restart", "1") == digest
        registry.stop()
        assert not registry.is_running
        with pytest.raises(OSError, match="refused"):
            http_request("GET", f"{registry.url}/v2/", timeout_seconds=2)
    finally:
        registry.close()


# -- token auth ---------------------------------------------------------------------


def test_token_mode_anonymous_pull_of_public_repo(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    assert token_registry.token_server is not None
    before = token_registry.token_server.token_requests
    inspected = _skopeo_inspect(token_registry, "pangeo/pangeo-notebook:2023.09.11")
    assert inspected.returncode == 0, inspected.stderr
    digest = "sha256:" + hashlib.sha256(inspected.stdout).hexdigest()
    assert digest == seeded_images["pangeo/pangeo-notebook:2023.09.11"]
    assert token_registry.token_server.token_requests > before


def test_token_mode_private_repo_needs_credentials(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    anonymous = _skopeo_inspect(token_registry, f"{PRIVATE_REPO}:1")
    assert anonymous.returncode != 0
    assert b"unauthorized" in anonymous.stderr.lower() or b"denied" in anonymous.stderr.lower()
    authorized = _skopeo_inspect(
        token_registry, f"{PRIVATE_REPO}:1", creds=token_registry.credentials
    )
    assert authorized.returncode == 0, authorized.stderr
    assert (
        "sha256:" + hashlib.sha256(authorized.stdout).hexdigest()
        == (seeded_images[f"{PRIVATE_REPO}:1"])
    )


@pytest.mark.parametrize(
    "repo",
    [
        pytest.param(PRIVATE_REPO, id="private"),
        pytest.param("nobody/never-pushed", id="missing"),
    ],
)
def test_token_mode_hub_like_401_for_private_and_missing(
    token_registry: RunningRegistry, seeded_images: SeededImages, repo: str
) -> None:
    status, headers, _ = _get(f"{token_registry.url}/v2/{repo}/manifests/1")
    assert status == 401
    challenge = headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'scope="repository:{repo}:pull"' in challenge
    assert token_registry.token_server is not None
    token_status, _, body = _get(
        f"{token_registry.token_server.realm}?service={token_registry.token_server.service}"
        f"&scope=repository:{repo}:pull"
    )
    assert token_status == 200
    answer = json.loads(body)
    assert answer["token"] == answer["access_token"]
    assert answer["expires_in"] > 0
    status, headers, _ = _get(
        f"{token_registry.url}/v2/{repo}/manifests/1",
        {"Authorization": f"Bearer {answer['token']}", "Accept": MANIFEST_ACCEPT},
    )
    assert status == 401
    assert 'error="insufficient_scope"' in headers["www-authenticate"]


def test_token_mode_wrong_password_is_refused(token_registry: RunningRegistry) -> None:
    assert token_registry.token_server is not None
    basic = base64.b64encode(b"reader:wrong").decode()
    status, _, _ = _get(
        f"{token_registry.token_server.realm}?service={token_registry.token_server.service}"
        f"&scope=repository:{PRIVATE_REPO}:pull",
        {"Authorization": f"Basic {basic}"},
    )
    assert status == 401


def test_token_mode_post_password_grant(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    server = token_registry.token_server
    assert server is not None
    assert token_registry.credentials is not None
    user, password = token_registry.credentials
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": user,
            "password": password,
            "service": server.service,
            "scope": f"repository:{PRIVATE_REPO}:pull",
            "client_id": "containerd",
        }
    ).encode()
    status, _, body = http_request("POST", server.realm, data=form)
    assert status == 200
    token = json.loads(body)["access_token"]
    status, headers, _ = _get(
        f"{token_registry.url}/v2/{PRIVATE_REPO}/manifests/1",
        {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT},
    )
    assert status == 200
    assert headers["docker-content-digest"] == seeded_images[f"{PRIVATE_REPO}:1"]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        pytest.param(TokenFault.UNAVAILABLE, 503, id="unavailable"),
        pytest.param(TokenFault.GARBAGE, 200, id="garbage"),
        pytest.param(TokenFault.NO_TOKEN, 200, id="no-token"),
    ],
)
def test_token_server_faults(
    token_registry: RunningRegistry, fault: TokenFault, status: int
) -> None:
    server = token_registry.token_server
    assert server is not None
    server.fault = fault
    try:
        got, _, body = _get(f"{server.realm}?service={server.service}&scope=repository:a/b:pull")
    finally:
        server.fault = TokenFault.NONE
    assert got == status
    if status == 200:
        parsed = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
        assert parsed is None or "token" not in parsed


def test_untrusted_token_is_refused_by_registry(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    server = token_registry.token_server
    assert server is not None
    server.fault = TokenFault.UNTRUSTED_SIGNATURE
    try:
        inspected = _skopeo_inspect(token_registry, "library/ubuntu:22.04")
    finally:
        server.fault = TokenFault.NONE
    assert inspected.returncode != 0
    assert _skopeo_inspect(token_registry, "library/ubuntu:22.04").returncode == 0


# -- htpasswd -----------------------------------------------------------------------


def test_htpasswd_mode_requires_credentials(
    htpasswd_registry: RunningRegistry, image_factory: ImageFactory
) -> None:
    digest = htpasswd_registry.push(image_factory.single(salt="htpasswd"), "infra/basic", "1")
    assert _skopeo_inspect(htpasswd_registry, "infra/basic:1").returncode != 0
    status, headers, _ = _get(f"{htpasswd_registry.url}/v2/")
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic ")
    authorized = _skopeo_inspect(
        htpasswd_registry, "infra/basic:1", creds=htpasswd_registry.credentials
    )
    assert authorized.returncode == 0, authorized.stderr
    assert "sha256:" + hashlib.sha256(authorized.stdout).hexdigest() == digest


# -- seeded set ---------------------------------------------------------------------


def test_seeded_images_match_registry_contents(
    open_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    for name, digest in seeded_images.items():
        if name.startswith(PRIVATE_REPO):
            continue
        repo, tag = name.rsplit(":", 1)
        assert open_registry.inspect_digest(repo, tag) == digest, name
    details = seeded_images.details
    assert (
        details["pangeo/pangeo-notebook:latest"].digest
        == (seeded_images["pangeo/pangeo-notebook:2023.09.12"])
    )
    assert len({seeded_images[f"pangeo/pangeo-notebook:2023.09.1{d}"] for d in "012"}) == 3
    assert details["pangeo/pangeo-notebook:2023.09.11"].platforms == ["linux/amd64", "linux/arm64"]
    assert details["arm/only-arm:1"].platforms == ["linux/arm64"]
    assert details["docker/v2s2:1"].media_type == DOCKER_MANIFEST_V2
    assert details["docker/v2s2-list:1"].media_type == DOCKER_MANIFEST_LIST
    assert details["jupyter/base-notebook:2024-01-15"].media_type == OCI_MANIFEST


def test_seeded_sizes_equal_sum_of_stored_descriptors(
    open_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    for name in ("docker/v2s2:1", "pangeo/pangeo-notebook:2023.09.11"):
        detail = seeded_images.details[name]
        repo = name.rsplit(":", 1)[0]
        for platform, digest in detail.platform_digests.items():
            status, _, body = open_registry.api_request(
                "GET", f"/v2/{repo}/manifests/{digest}", {"Accept": MANIFEST_ACCEPT}
            )
            assert status == 200
            manifest = json.loads(body)
            stored = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
            assert stored == detail.size_bytes[platform], (name, platform)


def test_registry_settings_point_at_the_registry(htpasswd_registry: RunningRegistry) -> None:
    assert htpasswd_registry.credentials is not None
    user, password = htpasswd_registry.credentials
    assert htpasswd_registry.registry_settings() == {
        "endpoint": htpasswd_registry.url,
        "username": user,
        "password": password,
    }
    assert htpasswd_registry.registry_settings(with_credentials=False) == {
        "endpoint": htpasswd_registry.url
    }


def test_missing_binary_raises_not_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match="install-deps"):
        require_binary("docker-registry")


# -- schema 1 double ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "media_type"),
    [
        pytest.param("1", SCHEMA1_SIGNED, id="signed"),
        pytest.param("unsigned", SCHEMA1_UNSIGNED, id="unsigned"),
    ],
)
def test_schema1_double_digest_agrees_with_skopeo(
    schema1_registry: Schema1Registry, tag: str, media_type: str
) -> None:
    # skopeo strips the JWS signatures itself (libtrust formatLength/formatTail), so equal
    # digests show the signed body is framed the way real schema 1 manifests are.
    formatted = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            f"docker://{schema1_registry.host}/{schema1_registry.repo}:{tag}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert formatted.returncode == 0, formatted.stderr
    status, headers, _ = http_request(
        "HEAD", f"{schema1_registry.url}/v2/{schema1_registry.repo}/manifests/{tag}"
    )
    assert status == 200
    assert headers["content-type"] == media_type
    assert headers["docker-content-digest"] == formatted.stdout.decode().strip()


def test_schema1_signature_verifies(schema1_registry: Schema1Registry) -> None:
    document = json.loads(schema1_registry.signed_body)
    (signature,) = document["signatures"]

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    protected = json.loads(unb64(signature["protected"]))
    payload = schema1_registry.signed_body[: protected["formatLength"]] + unb64(
        protected["formatTail"]
    )
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == schema1_registry.digest
    jwk = signature["header"]["jwk"]
    public_key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64(jwk["x"]), "big"),
        int.from_bytes(unb64(jwk["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    raw = unb64(signature["signature"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signing_input = f"{signature['protected']}.".encode() + base64.urlsafe_b64encode(
        payload
    ).rstrip(b"=")
    public_key.verify(der, signing_input, ec.ECDSA(SHA256()))  # raises when wrong


# -- from async tests ---------------------------------------------------------------


async def test_request_log_counts_concurrent_heads_exactly(
    token_registry: RunningRegistry, seeded_images: SeededImages
) -> None:
    # The checker's single-flight test relies on this count being exact under load.
    server = token_registry.token_server
    assert server is not None
    path = "/v2/library/ubuntu/manifests/22.04"
    async with aiohttp.ClientSession() as session:
        query = {"service": server.service, "scope": "repository:library/ubuntu:pull"}
        async with session.get(server.realm, params=query) as response:
            token = (await response.json())["token"]
        since = len(token_registry.request_log())
        headers = {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}

        async def head() -> str:
            async with session.head(token_registry.url + path, headers=headers) as response:
                assert response.status == 200
                return response.headers["Docker-Content-Digest"]

        digests = await asyncio.gather(*(head() for _ in range(200)))
    assert set(digests) == {seeded_images["library/ubuntu:22.04"]}
    assert token_registry.manifest_requests("library/ubuntu", "22.04", ("HEAD",), since) == 200
    assert token_registry.manifest_requests("library/ubuntu", "22.04", ("GET",), since) == 0


async def test_token_server_hang_and_reset_faults(token_registry: RunningRegistry) -> None:
    server = token_registry.token_server
    assert server is not None
    url = f"{server.realm}?service={server.service}&scope=repository:a/b:pull"
    async with aiohttp.ClientSession() as session:
        server.fault = TokenFault.HANG
        try:
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=0.5)):
                    pass
            server.fault = TokenFault.RESET
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url) as response:
                    await response.read()
        finally:
            server.fault = TokenFault.NONE
        async with session.get(url) as response:
            assert response.status == 200


def test_grant_unknown_repos_gives_self_hosted_404(token_registry: RunningRegistry) -> None:
    server = token_registry.token_server
    assert server is not None
    server.grant_unknown_repos = True
    try:
        status, _, body = _get(f"{server.realm}?service={server.service}&scope=repository:x/y:pull")
    finally:
        server.grant_unknown_repos = False
    token = json.loads(body)["token"]
    auth = {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}
    status, _, body = _get(f"{token_registry.url}/v2/x/y/manifests/1", auth)
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    status, _, body = _get(f"{token_registry.url}/v2/x/y/tags/list", auth)
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
