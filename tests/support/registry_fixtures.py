"""Pytest fixtures: real registries on 127.0.0.1 and the images tests push to them.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Session-scoped, started once:

* ``open_registry``: no auth.
* ``token_registry``: Bearer auth behind :class:`tests.support.tokenserver.TokenServer`
  (Hub-like); ``private/secret`` is private and needs ``token_registry.credentials``.
* ``htpasswd_registry``: Basic auth; ``htpasswd_registry.credentials``.
* ``schema1_registry``: a test double serving a schema 1 manifest (distribution 2.8 no
  longer accepts schema 1 pushes; see :mod:`tests.support.schema1`).
* ``seeded_images``: a standard set of quay.io- and Hub-like repositories pushed to
  ``open_registry`` and ``token_registry`` (same content, so the same digests in both).

Function-scoped: ``image_factory`` builds OCI layouts under the test's ``tmp_path``.

A missing ``docker-registry`` or ``skopeo`` makes these fixtures raise, so the tests
that use them fail (never skip).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import ImageFactory, OciImage
from tests.support.registry import MANIFEST_ACCEPT, RunningRegistry, start_registry
from tests.support.schema1 import Schema1Registry

PRIVATE_REPO = "private/secret"
"""The token registry's private repository (pull needs ``token_registry.credentials``)."""


@pytest.fixture
def image_factory(tmp_path: Path) -> ImageFactory:
    """An :class:`ImageFactory` writing layouts under this test's ``tmp_path``."""
    return ImageFactory(tmp_path / "images")


@pytest.fixture(scope="session")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry without auth."""
    registry = start_registry(tmp_path_factory.mktemp("open-registry"), mode="open")
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry with Hub-like token auth; ``.token_server`` counts token requests."""
    registry = start_registry(
        tmp_path_factory.mktemp("token-registry"), mode="token", private_repos=(PRIVATE_REPO,)
    )
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry with Basic auth (bcrypt cost 4); ``.credentials`` may push and pull."""
    registry = start_registry(tmp_path_factory.mktemp("htpasswd-registry"), mode="htpasswd")
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture(scope="session")
def schema1_registry() -> Iterator[Schema1Registry]:
    """Serves ``legacy/schema1:1`` (signed schema 1) and ``legacy/schema1:unsigned``."""
    registry = Schema1Registry().start()
    try:
        yield registry
    finally:
        registry.stop()


@dataclass(frozen=True)
class SeededImage:
    """One pushed ``repo:tag`` of :data:`seeded_images`, as the registry holds it."""

    name: str
    """``repo:tag``."""
    digest: str
    """Top-level manifest digest (what ``skopeo inspect`` reports)."""
    media_type: str
    """Top-level media type as stored (OCI or Docker)."""
    platform_digests: dict[str, str]
    """``os/arch`` -> digest of that platform's manifest as stored."""
    size_bytes: dict[str, int]
    """``os/arch`` -> compressed size (config + layers)."""
    image: OciImage
    """The layout that was pushed."""

    @property
    def platforms(self) -> list[str]:
        return list(self.platform_digests)


class SeededImages(dict[str, str]):
    """``repo:tag`` -> digest for every seeded image, plus :attr:`details` per name."""

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[str, SeededImage] = {}


def _stored_manifest(registry: RunningRegistry, repo: str, digest: str) -> dict[str, Any]:
    status, _, body = registry.api_request(
        "GET", f"/v2/{repo}/manifests/{digest}", {"Accept": MANIFEST_ACCEPT}
    )
    if status != 200:
        raise RuntimeError(f"GET {repo}@{digest} answered {status}")
    document: dict[str, Any] = json.loads(body)
    return document


def _describe(
    registry: RunningRegistry, image: OciImage, repo: str, tag: str, digest: str
) -> SeededImage:
    top = _stored_manifest(registry, repo, digest)
    media_type = str(top["mediaType"])
    platform_digests: dict[str, str] = {}
    if isinstance(top.get("manifests"), list):
        for entry in top["manifests"]:
            platform = entry["platform"]
            platform_digests[f"{platform['os']}/{platform['architecture']}"] = entry["digest"]
    else:
        platform_digests[image.manifests[0].os_arch] = digest
    sizes = {platform: image.manifest_for(platform).size_bytes for platform in platform_digests}
    return SeededImage(
        name=f"{repo}:{tag}",
        digest=digest,
        media_type=media_type,
        platform_digests=platform_digests,
        size_bytes=sizes,
        image=image,
    )


@pytest.fixture(scope="session")
def seeded_images(
    tmp_path_factory: pytest.TempPathFactory,
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
) -> SeededImages:
    """Push the standard image set to ``open_registry`` and ``token_registry``.

    =====================================  ====================================================
    ``pangeo/pangeo-notebook:2023.09.10``  OCI index amd64+arm64 (distinct digest per tag)
    ``pangeo/pangeo-notebook:2023.09.11``  OCI index amd64+arm64
    ``pangeo/pangeo-notebook:2023.09.12``  OCI index amd64+arm64
    ``pangeo/pangeo-notebook:latest``      same manifest as ``2023.09.12``
    ``jupyter/base-notebook:2024-01-15``   single-platform OCI manifest, linux/amd64
    ``library/ubuntu:22.04``               OCI index amd64+arm64 with busybox ``/bin/sh``
    ``arm/only-arm:1``                     OCI index with only linux/arm64
    ``docker/v2s2:1``                      Docker schema 2 manifest, linux/amd64
    ``docker/v2s2-list:1``                 Docker manifest list amd64+arm64
    ``noshell/app:1``                      amd64 image with no shell at all
    ``private/secret:1``                   token registry only; needs credentials
    =====================================  ====================================================
    """
    factory = ImageFactory(tmp_path_factory.mktemp("seeded-images"))
    seeds: list[tuple[str, str, OciImage, bool]] = []  # repo, tag, image, docker_v2s2
    pangeo = "pangeo/pangeo-notebook"
    for tag in ("2023.09.10", "2023.09.11", "2023.09.12"):
        seeds.append((pangeo, tag, factory.multi_platform(salt=f"{pangeo}:{tag}"), False))
    seeds.append((pangeo, "latest", seeds[-1][2], False))
    seeds += [
        ("jupyter/base-notebook", "2024-01-15", factory.single(salt="jupyter-base"), False),
        (
            "library/ubuntu",
            "22.04",
            factory.build(
                platforms=("linux/amd64", "linux/arm64/v8"),
                busybox=True,
                layer_sizes=(1024,),
                salt="ubuntu:22.04",
            ),
            False,
        ),
        ("arm/only-arm", "1", factory.arm64_only(salt="only-arm"), False),
        ("docker/v2s2", "1", factory.single(salt="v2s2"), True),
        ("docker/v2s2-list", "1", factory.multi_platform(salt="v2s2-list"), True),
        ("noshell/app", "1", factory.no_shell(salt="noshell"), False),
    ]
    repos = list(dict.fromkeys(repo for repo, *_ in seeds))
    secret = factory.single(salt="private-secret")

    def push_repo(registry: RunningRegistry, repo: str) -> dict[str, str]:
        # Tags of one repository go in order (so ``latest`` lands last); repositories
        # and registries go in parallel, which makes the fixture ~3x faster.
        return {
            f"{r}:{tag}": registry.push(image, r, tag, docker_v2s2=docker_v2s2)
            for r, tag, image, docker_v2s2 in seeds
            if r == repo
        }

    jobs = [(registry, repo) for registry in (open_registry, token_registry) for repo in repos]
    with ThreadPoolExecutor(max_workers=4) as pool:
        private_future = pool.submit(token_registry.push, secret, PRIVATE_REPO, "1")
        pushed = list(pool.map(lambda job: push_repo(*job), jobs))
        private_digest = private_future.result()
    open_digests: dict[str, str] = {}
    token_digests: dict[str, str] = {}
    for (registry, _repo), digests in zip(jobs, pushed, strict=True):
        (open_digests if registry is open_registry else token_digests).update(digests)
    if open_digests != token_digests:
        raise AssertionError(f"registries disagree: {open_digests} != {token_digests}")

    result = SeededImages()
    for repo, tag, image, _docker_v2s2 in seeds:
        name = f"{repo}:{tag}"
        result[name] = open_digests[name]
        result.details[name] = _describe(open_registry, image, repo, tag, result[name])
    name = f"{PRIVATE_REPO}:1"
    result[name] = private_digest
    result.details[name] = _describe(token_registry, secret, PRIVATE_REPO, "1", private_digest)
    return result
