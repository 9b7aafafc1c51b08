"""Auth pieces without a registry: challenges, token answers, token cache, credential sources."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagewarden.config import CredentialsSettings, RegistrySettings
from imagewarden.errors import InvalidRegistryResponseError
from imagewarden.registry.auth import (
    DEFAULT_TOKEN_SECONDS,
    Challenge,
    CredentialStore,
    TokenCache,
    parse_challenges,
    parse_token_response,
)
from imagewarden.registry.manifest import IndexEntry, Platform, select_platform


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/ubuntu:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/ubuntu:pull",
                    },
                )
            ],
            id="docker-hub",
        ),
        pytest.param(
            'Bearer realm="https://quay.io/v2/auth",service="quay.io",'
            'scope="repository:a/b:pull,push",error="insufficient_scope"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://quay.io/v2/auth",
                        "service": "quay.io",
                        "scope": "repository:a/b:pull,push",
                        "error": "insufficient_scope",
                    },
                )
            ],
            id="quoted-value-with-comma",
        ),
        pytest.param(
            'Basic realm="Registry Realm"',
            [("basic", {"realm": "Registry Realm"})],
            id="basic",
        ),
        pytest.param(
            'Basic realm="x", Bearer realm="https://t/token",service=s',
            [("basic", {"realm": "x"}), ("bearer", {"realm": "https://t/token", "service": "s"})],
            id="two-challenges-one-header",
        ),
        pytest.param(
            'BEARER Realm="https://t/token", SERVICE="s"',
            [("bearer", {"realm": "https://t/token", "service": "s"})],
            id="case-insensitive",
        ),
        pytest.param(r'Bearer realm="a\"b"', [("bearer", {"realm": 'a"b'})], id="escaped-quote"),
        pytest.param("", [], id="empty"),
        pytest.param('realm="orphan"', [], id="parameters-without-scheme"),
        pytest.param(
            'Bearer realm="' + "x" * 20000 + '"',
            [("bearer", {"realm": '"' + "x" * (8192 - 14)})],
            id="oversized-is-cut",
        ),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert parse_challenges(header) == tuple(Challenge(s, p) for s, p in expected)


@pytest.mark.parametrize(
    ("body", "token", "lifetime"),
    [
        pytest.param(b'{"token": "abc", "expires_in": 300}', "abc", 300, id="token"),
        pytest.param(b'{"access_token": "xyz"}', "xyz", DEFAULT_TOKEN_SECONDS, id="access-token"),
        pytest.param(
            b'{"token": "abc", "expires_in": 5}', "abc", DEFAULT_TOKEN_SECONDS, id="lifetime-floor"
        ),
        pytest.param(
            b'{"token": "abc", "expires_in": "soon"}',
            "abc",
            DEFAULT_TOKEN_SECONDS,
            id="non-numeric-lifetime",
        ),
    ],
)
def test_parse_token_response(body: bytes, token: str, lifetime: float) -> None:
    parsed, expires_at = parse_token_response(body, registry="r", now=1000.0)
    assert parsed == token
    assert expires_at == pytest.approx(1000.0 + lifetime - 5.0)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>", id="html"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"token": ""}', id="empty-token"),
        pytest.param(b'{"token": 5}', id="non-string"),
        pytest.param(b'{"token": "' + b"x" * 70000 + b'"}', id="oversized"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_garbage_token_answers_are_errors(body: bytes) -> None:
    with pytest.raises(InvalidRegistryResponseError, match=r"not a token|usable token"):
        parse_token_response(body, registry="r", now=0.0)


def test_token_cache_expires_and_is_bounded() -> None:
    now = [0.0]
    cache = TokenCache(max_entries=2, clock=lambda: now[0])
    cache.put(("realm", "svc", "a", ""), "t-a", expires_at=10.0)
    cache.put(("realm", "svc", "b", ""), "t-b", expires_at=10.0)
    assert cache.get(("realm", "svc", "a", "")) == "t-a"
    cache.put(("realm", "svc", "c", ""), "t-c", expires_at=10.0)  # evicts b, the least used
    assert cache.get(("realm", "svc", "b", "")) is None
    now[0] = 10.0
    assert cache.get(("realm", "svc", "a", "")) is None


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def credential_helper(tmp_path: Path) -> Iterator[str]:
    """A real ``docker-credential-*`` program on PATH speaking the helper protocol."""
    name = "imagewardentest"
    script = tmp_path / "bin" / f"docker-credential-{name}"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 1\n'
        "read server\n"
        'if [ "$server" = "helped.example.org" ]; then\n'
        '  echo \'{"ServerURL": "helped.example.org", "Username": "robot", "Secret": "s3cret"}\'\n'
        "else\n"
        '  echo "credentials not found in native keychain"; exit 1\n'
        "fi\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{script.parent}:{old_path}"
    try:
        yield name
    finally:
        os.environ["PATH"] = old_path


def test_credentials_come_from_each_source_for_their_host_only(
    tmp_path: Path, credential_helper: str
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("static-pw\n")
    secret = tmp_path / "dockerconfigjson"
    secret.write_text(
        json.dumps(
            {
                "auths": {
                    "quay.io": {"auth": _auth("quay-bot", "quay-pw")},
                    "https://index.docker.io/v1/": {"auth": _auth("hub-bot", "hub-pw")},
                }
            }
        )
    )
    docker_config = tmp_path / "config.json"
    docker_config.write_text(json.dumps({"credHelpers": {"helped.example.org": credential_helper}}))
    store = CredentialStore(
        {"static.example.org": RegistrySettings(username="u", password_file=str(password_file))},
        CredentialsSettings(
            docker_config=str(docker_config), dockerconfigjson_files=(str(secret),)
        ),
    )
    found = {
        host: (c.username, c.password) if (c := store.for_host(host)) else None
        for host in (
            "static.example.org",
            "quay.io",
            "docker.io",
            "helped.example.org",
            "evil.example.org",
            "quay.io.evil.example.org",
        )
    }
    assert found == {
        "static.example.org": ("u", "static-pw"),
        "quay.io": ("quay-bot", "quay-pw"),
        "docker.io": ("hub-bot", "hub-pw"),
        "helped.example.org": ("robot", "s3cret"),
        "evil.example.org": None,
        "quay.io.evil.example.org": None,
    }
    assert "s3cret" not in repr(store.for_host("helped.example.org"))


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        pytest.param("linux/amd64", "sha256:amd64", id="amd64"),
        pytest.param("linux/arm64", "sha256:arm64-v8", id="arm64-any-variant"),
        pytest.param("linux/arm64/v8", "sha256:arm64-v8", id="arm64-v8-exact"),
        pytest.param("linux/arm/v7", "sha256:arm-v7", id="arm-v7"),
        pytest.param("linux/arm/v6", None, id="arm-v6-missing"),
        pytest.param("windows/amd64", None, id="other-os"),
    ],
)
def test_platform_selection(wanted: str, expected: str | None) -> None:
    entries = tuple(
        IndexEntry(digest, "application/vnd.oci.image.manifest.v1+json", platform, 1)
        for digest, platform in [
            ("sha256:amd64", Platform("linux", "amd64")),
            ("sha256:arm64-v8", Platform("linux", "arm64", "v8")),
            ("sha256:arm-v7", Platform("linux", "arm", "v7")),
            ("sha256:attestation", Platform("unknown", "unknown")),
        ]
    )
    chosen = select_platform(entries, Platform.parse(wanted))
    assert (chosen.digest if chosen else None) == expected
