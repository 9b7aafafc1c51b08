"""No network connection to a host that policy does not allow, proven with listening sockets.

Policy allows only ``quay.io/pangeo/*``; quay.io's endpoint is a counting pass-through proxy in
front of the real (seeded) registry. Every other host an attacker might spell — Docker Hub and
its aliases, the cloud metadata address and name, ``localhost`` and loopback addresses, IPv6
forms, upper-case and port variants — is mapped by ``registries:`` endpoint overrides to a
*decoy*: a socket on 127.0.0.1 and one on ::1 (the same port number) that count every TCP
connection they accept. Images that name a loopback address with the decoy port directly need no
mapping: the client would dial the decoy itself.

The tests check the verdict of each hostile spelling and then that the decoys accepted zero
connections (and the allowed proxy none either, since a refused name is refused before any I/O).
The control tests show the harness can fail: allowed spellings do reach the allowed proxy.
A hypothesis test throws generated combinations of the same tricks at the checker.

The last test is about credentials rather than hosts: a redirect from the allowed registry to
another origin (blob storage) is followed without the ``Authorization`` header, as recorded by
the redirect target.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagewarden.checker import Checker
from imagewarden.config import Settings, parse_settings
from imagewarden.metrics import Metrics
from imagewarden.registry import RegistryClient
from tests.support.faultproxy import FaultKind, FaultPlan, FaultProxy, free_dual_stack_port
from tests.support.registry import RunningRegistry
from tests.support.registry_fixtures import SeededImages

settings.register_profile(
    "no-connection-ci", max_examples=150, deadline=None, database=None, derandomize=True
)
settings.register_profile("no-connection-long", max_examples=5000, deadline=None)
FUZZ_PROFILE = (
    "no-connection-long" if os.environ.get("IMAGEWARDEN_FUZZ") == "long" else "no-connection-ci"
)

ALLOWED_IMAGE = "quay.io/pangeo/pangeo-notebook:2023.09.11"
DIGEST = "sha256:" + "a" * 64


@dataclass
class Listeners:
    """The allowed registry's proxy and the two decoys that must never be dialled."""

    allowed: FaultProxy
    decoy4: FaultProxy
    decoy6: FaultProxy

    @property
    def decoy_port(self) -> int:
        return self.decoy4.port

    def reset(self) -> None:
        for listener in (self.allowed, self.decoy4, self.decoy6):
            listener.reset_counts()

    def decoy_connections(self) -> int:
        return self.decoy4.accepted + self.decoy6.accepted


@pytest.fixture(scope="module")
def listeners(open_registry: RunningRegistry, seeded_images: SeededImages) -> Iterator[Listeners]:
    port = free_dual_stack_port()
    with (
        FaultProxy(("127.0.0.1", open_registry.port), name="allowed-registry") as allowed,
        FaultProxy(None, host="127.0.0.1", port=port, name="decoy-v4") as decoy4,
        FaultProxy(None, host="::1", port=port, name="decoy-v6") as decoy6,
    ):
        yield Listeners(allowed, decoy4, decoy6)


DECOYED_HOSTS_V4 = (
    "docker.io",  # also index.docker.io and registry-1.docker.io, which are the same registry
    "ghcr.io",
    "evil.example.com",
    "quay.io.evil.example.com",
    "quay.io:443",
    "quay.io:80",
    "169.254.169.254",
    "169.254.169.254:80",
    "metadata.google.internal",
    "localhost",
    "127.0.0.1",
    "127.0.0.1:80",
)
DECOYED_HOSTS_V6 = ("[::1]", "[::1]:80", "[::ffff:7f00:1]")


def hostile_settings(listeners: Listeners, **extra: Any) -> Settings:
    registries: dict[str, dict[str, str]] = {"quay.io": {"endpoint": listeners.allowed.url}}
    registries.update({host: {"endpoint": listeners.decoy4.url} for host in DECOYED_HOSTS_V4})
    registries.update({host: {"endpoint": listeners.decoy6.url} for host in DECOYED_HOSTS_V6})
    return parse_settings(
        {
            "registries": registries,
            "policy": {"allow": ["quay.io/pangeo/*"]},
            "checker": {"timeout_seconds": 3},
            **extra,
        }
    )


@pytest.fixture(scope="module")
async def checker(listeners: Listeners) -> AsyncIterator[Checker]:
    settings = hostile_settings(listeners)
    metrics = Metrics()
    async with RegistryClient(settings, metrics=metrics) as client:
        yield Checker(settings, client, metrics=metrics)


# Each row: the image string, and how it must be refused ("policy" or "invalid_reference").
# {port} is the decoy port, which listens on both 127.0.0.1 and ::1.
HOSTILE = [
    pytest.param("quay.io/pangeonot/x:1", "policy", id="prefix-lookalike-org"),
    pytest.param("quay.io/pangeo/a/b:1", "policy", id="one-segment-deeper"),
    pytest.param("quay.io/pangeo:1", "policy", id="org-itself"),
    pytest.param("docker.io/library/ubuntu:22.04", "policy", id="docker-hub"),
    pytest.param("index.docker.io/library/ubuntu:22.04", "policy", id="index.docker.io-alias"),
    pytest.param("registry-1.docker.io/library/ubuntu", "policy", id="registry-1-alias"),
    pytest.param("ubuntu:22.04", "policy", id="short-hub-name"),
    pytest.param("pangeo/pangeo-notebook:1", "policy", id="hub-name-like-allowed-org"),
    pytest.param("user:pass@quay.io/pangeo/x:1", "invalid_reference", id="userinfo"),
    pytest.param("pangeo@quay.io/pangeo/x", "invalid_reference", id="user-at-host"),
    pytest.param("quay.io@evil.example.com/pangeo/x", "invalid_reference", id="host-at-host"),
    pytest.param("evil.example.com/quay.io/pangeo/x:1", "policy", id="allowed-host-as-path"),
    pytest.param("quay.io.evil.example.com/pangeo/x:1", "policy", id="allowed-host-as-prefix"),
    pytest.param("quay.io:443/pangeo/x:1", "policy", id="explicit-https-port"),
    pytest.param("quay.io:80/pangeo/x:1", "policy", id="explicit-http-port"),
    pytest.param("quay.io:{port}/pangeo/x:1", "policy", id="allowed-host-decoy-port"),
    pytest.param("127.0.0.1:{port}/pangeo/x:1", "policy", id="loopback-decoy-port"),
    pytest.param("127.0.0.1/pangeo/x:1", "policy", id="loopback-no-port"),
    pytest.param("localhost:{port}/pangeo/x:1", "policy", id="localhost-decoy-port"),
    pytest.param("LOCALHOST:{port}/pangeo/x:1", "policy", id="upper-case-localhost"),
    pytest.param("localhost/pangeo/x:1", "policy", id="localhost-no-port"),
    pytest.param("[::1]:{port}/pangeo/x:1", "policy", id="ipv6-loopback"),
    pytest.param("[::1]/pangeo/x:1", "policy", id="ipv6-loopback-no-port"),
    pytest.param("[0:0:0:0:0:0:0:1]:{port}/pangeo/x:1", "policy", id="ipv6-loopback-long"),
    pytest.param("[::ffff:7f00:1]:{port}/pangeo/x:1", "policy", id="ipv4-mapped-ipv6-hex"),
    pytest.param(
        "[::ffff:127.0.0.1]:{port}/pangeo/x:1", "invalid_reference", id="ipv4-mapped-ipv6"
    ),
    pytest.param("[fe80::1%25lo]:{port}/pangeo/x", "invalid_reference", id="ipv6-zone"),
    pytest.param("127.1:{port}/pangeo/x:1", "policy", id="short-ipv4"),
    pytest.param("2130706433:{port}/pangeo/x:1", "policy", id="decimal-ipv4"),
    pytest.param("0x7f000001:{port}/pangeo/x:1", "policy", id="hex-ipv4"),
    pytest.param("169.254.169.254/latest/meta-data:1", "policy", id="link-local-metadata"),
    pytest.param("169.254.169.254:80/latest/meta-data", "policy", id="metadata-port-80"),
    pytest.param("metadata.google.internal/computemetadata/v1:1", "policy", id="gce-metadata"),
    pytest.param("METADATA.GOOGLE.INTERNAL/x/y", "policy", id="upper-case-metadata-host"),
    pytest.param(
        "metadata.google.internal/computeMetadata/v1", "invalid_reference", id="metadata-path"
    ),
    pytest.param("metadata/computemetadata/v1", "policy", id="metadata-short-name"),
    pytest.param("quay.io%2fpangeo/x:1", "invalid_reference", id="url-encoded-slash-in-host"),
    pytest.param("quay.io/pangeo%2fx:1", "invalid_reference", id="url-encoded-slash-in-path"),
    pytest.param("quay.io/pangeo/..%2f..%2fx", "invalid_reference", id="url-encoded-dotdot"),
    pytest.param("quay.io/pangeo/../x", "invalid_reference", id="dotdot-path"),
    pytest.param("quay.io/pangeo/x%40evil:1", "invalid_reference", id="url-encoded-at"),
    pytest.param("https://quay.io/pangeo/x:1", "invalid_reference", id="url-scheme"),
    pytest.param("//evil.example.com/pangeo/x", "invalid_reference", id="scheme-relative-url"),
    pytest.param("quay.io./pangeo/x:1", "invalid_reference", id="trailing-dot"),
    pytest.param("evil.example.com./x", "invalid_reference", id="trailing-dot-other-host"),
    pytest.param("quay.io\\evil.example.com/pangeo/x", "invalid_reference", id="backslash"),
    pytest.param(
        "quay.io/pangeo/x:1\r\nHost: evil.example.com", "invalid_reference", id="crlf-injection"
    ),
    pytest.param("qu\u0430y.io/pangeo/x:1", "invalid_reference", id="cyrillic-homoglyph"),
    pytest.param("xn--quy-8cd.io/pangeo/x:1", "policy", id="punycode-host"),
    pytest.param("quay.io/pangeo/*", "invalid_reference", id="glob-in-image"),
]


@pytest.mark.parametrize(("image", "code"), HOSTILE)
async def test_hostile_spelling_is_refused_without_a_connection(
    checker: Checker, listeners: Listeners, image: str, code: str
) -> None:
    image = image.replace("{port}", str(listeners.decoy_port))
    listeners.reset()
    verdict = await checker.check(image)
    assert (verdict.allowed, verdict.code) == (False, code), verdict.reason
    await asyncio.sleep(0.02)  # a connection the checker started would be accepted by now
    assert listeners.decoy_connections() == 0
    assert listeners.allowed.accepted == 0


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(ALLOWED_IMAGE, id="as-written"),
        pytest.param("QUAY.IO/pangeo/pangeo-notebook:2023.09.11", id="upper-case-host"),
        pytest.param("Quay.Io/pangeo/pangeo-notebook:2023.09.11", id="mixed-case-host"),
    ],
)
async def test_allowed_spellings_reach_only_the_allowed_registry(
    checker: Checker, listeners: Listeners, seeded_images: SeededImages, image: str
) -> None:
    checker._cache.entries.clear()
    listeners.reset()
    verdict = await checker.check(image)
    assert verdict.allowed, verdict.reason
    assert verdict.digest == seeded_images["pangeo/pangeo-notebook:2023.09.11"]
    assert listeners.allowed.accepted >= 1  # the harness does see connections
    assert listeners.decoy_connections() == 0


async def test_docker_hub_aliases_use_the_configured_docker_io_endpoint(
    listeners: Listeners, seeded_images: SeededImages
) -> None:
    # registry-1.docker.io is Docker Hub's real endpoint; when docker.io has a mirror, an
    # allowed name spelled with that alias must go to the mirror, not around it.
    settings = parse_settings(
        {
            "registries": {"docker.io": {"endpoint": listeners.allowed.url}},
            "policy": {"allow": ["docker.io/library/*"]},
        }
    )
    spellings = [
        "ubuntu:22.04",
        "docker.io/library/ubuntu:22.04",
        "index.docker.io/library/ubuntu:22.04",
        "registry-1.docker.io/library/ubuntu:22.04",
        "Docker.IO/library/ubuntu:22.04",
    ]
    async with RegistryClient(settings) as client:
        checker = Checker(settings, client)
        for image in spellings:
            checker._cache.entries.clear()  # most spellings share one normalized name
            listeners.reset()
            verdict = await checker.check(image)
            assert verdict.allowed, f"{image}: {verdict.reason}"
            assert verdict.digest == seeded_images["library/ubuntu:22.04"], image
            assert listeners.allowed.accepted >= 1, image


def _hostile_hosts(decoy_port: int) -> st.SearchStrategy[str]:
    port = str(decoy_port)
    base = st.sampled_from(
        [
            "quay.io",
            *DECOYED_HOSTS_V4,
            *DECOYED_HOSTS_V6,
            "index.docker.io",
            "registry-1.docker.io",
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            f"[::ffff:7f00:1]:{port}",
            f"quay.io:{port}",
            f"2130706433:{port}",
            "",
        ]
    )
    case = st.sampled_from([str.lower, str.upper, str.title, lambda text: text])
    prefix = st.sampled_from(["", "user:pass@", "user@", "http://", "//", "%2f", " "])
    suffix = st.sampled_from(["", ".", "%2e", "@quay.io", ":", "%40", "\\", "#"])
    return st.builds(lambda p, h, c, s: p + c(h) + s, prefix, base, case, suffix)


_PATHS = st.sampled_from(
    ["pangeo/pangeo-notebook", "pangeo/x", "pangeo", "pangeo/a/b", "library/ubuntu", "x"]
)
_TAILS = st.sampled_from(["", ":2023.09.11", ":1", f"@{DIGEST}", ":1%0d%0aX:y", ":1@evil"])


@settings(
    settings.get_profile(FUZZ_PROFILE),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_generated_tricks_never_reach_a_decoy(
    checker: Checker, listeners: Listeners, data: st.DataObject
) -> None:
    host = data.draw(_hostile_hosts(listeners.decoy_port), label="host")
    image = host + ("/" if host else "") + data.draw(_PATHS) + data.draw(_TAILS)
    verdict = await checker.check(image)
    assert verdict.code in {
        "policy",
        "invalid_reference",
        "ok",
        "not_found",
        "tag_missing",
    }, verdict.reason
    if verdict.allowed or verdict.code in ("not_found", "tag_missing"):
        # Only names the policy admits may be looked up, and only at quay.io's endpoint.
        assert verdict.reference is not None
        assert verdict.reference.lower().startswith("quay.io/pangeo/"), verdict.reference
    assert listeners.decoy_connections() == 0, image


@pytest.mark.parametrize(
    "storage_host",
    [pytest.param("127.0.0.1", id="other-port"), pytest.param("localhost", id="other-host-name")],
)
async def test_redirect_to_another_origin_drops_authorization(
    token_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seeded_images: SeededImages,
    storage_host: str,
) -> None:
    # quay.io is the token registry behind a proxy that sends every manifest request carrying
    # a token to "blob storage": another origin that records headers and is served by the open
    # registry (same content, so the same digests).
    with (
        FaultProxy(("127.0.0.1", open_registry.port), name="blob-storage") as storage,
        FaultProxy(("127.0.0.1", token_registry.port), name="token-front") as front,
    ):
        settings = parse_settings(
            {
                "registries": {"quay.io": {"endpoint": front.url}},
                "policy": {"allow": ["quay.io/pangeo/*"]},
            }
        )
        redirect = FaultPlan(
            FaultKind.REDIRECT,
            redirect_to=f"http://{storage_host}:{storage.port}",
            with_header="authorization",
        )
        async with RegistryClient(settings) as client:
            with front.inject(redirect):
                verdict = await Checker(settings, client).check(ALLOWED_IMAGE)
    assert verdict.allowed, verdict.reason
    assert verdict.digest == seeded_images["pangeo/pangeo-notebook:2023.09.11"]
    # The token was sent to the registry's own origin, and each of those requests redirected…
    assert redirect.hits >= 2  # HEAD by tag, GET of the index (and platform manifest)
    assert all(
        r.headers["authorization"].startswith("Bearer ")
        for r in front.requests
        if r.fault is FaultKind.REDIRECT
    )
    # …and the other origin answered them all without ever seeing it.
    assert len(storage.requests_for("/manifests/")) == redirect.hits
    assert [r for r in storage.requests if "authorization" in r.headers] == []
