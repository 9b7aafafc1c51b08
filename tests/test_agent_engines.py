"""The node agent against real engines: podman's Docker API service and containerd's CRI.

Every test runs once per engine (``node_engine`` is parametrized) and pulls from real
distribution registries started by the registry fixtures, through :class:`RegistryProxy` where
a test needs a registry that is slow, stalls or loses an image. What the engine holds is checked
with the engine's own command line (``podman image exists``, ``ctr images ls``), not with the
agent's code. Image content is salted per test and engine so the shared engine storage of the
session never makes one test's pull another's skip.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagewarden.errors import EngineUnavailableError, ImagePullError
from imagewarden.prepull.agent import ImageRecord, ImageState, NodeAgent
from imagewarden.prepull.engines import EngineKind, PullTarget, open_engine
from tests.support.agent_fixtures import (
    open_agent,
    registry_entry,
    registry_proxy,
    write_agent_config,
)
from tests.support.containerd import Containerd
from tests.support.images import ImageFactory, OciImage
from tests.support.podman import PodmanService
from tests.support.registry import RunningRegistry, start_registry

pytestmark = pytest.mark.engine

LAYER_SIZES = (300_000, 200_000, 100_000)
"""Three layers per image: multi-layer pulls, small enough for a quick suite."""


@dataclass
class NodeEngine:
    """The engine under test and independent ways to look at (and fill) its storage."""

    kind: EngineKind
    address: str
    add_registry: Callable[[str, str], None]
    """Make the engine reach ``host`` at ``url`` over plain HTTP (containerd needs hosts.toml)."""
    holds: Callable[[str], bool]
    """Whether the engine holds ``name@digest``, asked through its own command line."""
    pull_outside: Callable[[str], None]
    """Pull ``name:tag`` with the engine's own command line (not through the agent)."""

    @property
    def id(self) -> str:
        return "podman" if self.kind is EngineKind.DOCKER else "containerd"


def _podman_engine(service: PodmanService) -> NodeEngine:
    def holds(pinned: str) -> bool:
        return service.cli("image", "exists", pinned, check=False).returncode == 0

    def pull_outside(reference: str) -> None:
        service.cli("pull", "--quiet", "--tls-verify=false", reference)

    return NodeEngine(
        kind=EngineKind.DOCKER,
        address=service.base_url,
        add_registry=lambda host, url: None,  # every 127.0.0.1 port is plain HTTP there
        holds=holds,
        pull_outside=pull_outside,
    )


def _containerd_engine(node: Containerd) -> NodeEngine:
    def holds(pinned: str) -> bool:
        return pinned in node.ctr("images", "ls", "-q").split()

    def pull_outside(reference: str) -> None:
        # Through CRI's namespace, as a kubelet would have pulled it before the agent ran.
        node.pull_with_ctr(reference)

    def add_registry(host: str, url: str) -> None:
        node.add_registry(host, url)

    return NodeEngine(
        kind=EngineKind.CRI,
        address=node.address,
        add_registry=add_registry,
        holds=holds,
        pull_outside=pull_outside,
    )


@pytest.fixture(params=[EngineKind.DOCKER, EngineKind.CRI], ids=["podman", "containerd"])
def node_engine(request: pytest.FixtureRequest) -> NodeEngine:
    if request.param is EngineKind.DOCKER:
        return _podman_engine(request.getfixturevalue("podman_service"))
    return _containerd_engine(request.getfixturevalue("containerd_node"))


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A registry of this test alone (stopped, emptied or restarted by the test)."""
    registry = start_registry(tmp_path / "registry", mode="open")
    try:
        yield registry
    finally:
        registry.close()


def _salt(request: pytest.FixtureRequest, node_engine: NodeEngine, name: str) -> str:
    return f"{request.node.name}:{node_engine.id}:{name}:{time.time_ns()}"


def _push_images(
    registry: RunningRegistry,
    factory: ImageFactory,
    salt: str,
    repos: Sequence[str],
    *,
    layer_sizes: Sequence[int] = LAYER_SIZES,
) -> dict[str, OciImage]:
    images = {}
    for index, repo in enumerate(repos):
        image = factory.build(
            platforms=("linux/amd64", "linux/arm64") if index == 0 else ("linux/amd64",),
            layer_sizes=layer_sizes,
            salt=f"{salt}:{repo}",
        )
        registry.push(image, repo, "1")
        images[repo] = image
    return images


def _record(agent: NodeAgent, repo: str) -> ImageRecord:
    matches = [r for r in agent.records if r.reference.path == repo]
    assert len(matches) == 1, [r.image for r in agent.records]
    return matches[0]


def _sample(agent: NodeAgent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(f"imagewarden_{name}", labels)
    return 0.0 if value is None else value


class _Recorder:
    """A progress view that keeps every (time, bytes, total, state) it was shown, per image."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, int, int | None, str]]] = {}

    def refresh(self, records: Sequence[ImageRecord]) -> None:
        now = time.monotonic()
        for record in records:
            self.samples.setdefault(record.image, []).append(
                (now, record.bytes_done, record.bytes_total, record.state.value)
            )


async def test_pool_of_multilayer_images_pulls_exact_bytes_and_second_run_pulls_nothing(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "pool")
    repos = [f"agent-{node_engine.id}/pool-{index}" for index in range(3)]
    images = _push_images(open_registry, image_factory, salt, repos)
    private_repo = f"agent-{node_engine.id}/private"
    private = image_factory.build(layer_sizes=LAYER_SIZES, salt=f"{salt}:private")
    token_registry.push(private, private_repo, "1")
    assert token_registry.token_server is not None
    token_registry.token_server.add_private(private_repo)
    images[private_repo] = private
    pool = [open_registry.reference(repo, "1") for repo in repos]
    pool.append(token_registry.reference(private_repo, "1"))
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": pool},
        registries=dict([registry_entry(open_registry), registry_entry(token_registry)]),
    )
    token_registry.token_server.reset_counts()

    async with open_agent(config, "cpu", node_engine.kind, node_engine.address) as agent:
        report = await agent.run_round()

        assert report.complete, agent.status()
        assert len(report.pulled) == 4
        total = 0
        for repo, image in images.items():
            record = _record(agent, repo)
            expected = image.manifest_for("linux/amd64").size_bytes
            assert record.state is ImageState.PRESENT
            assert record.digest == image.digest
            assert (record.last_pull_bytes, record.last_pull_exact) == (expected, True), repo
            assert record.size_bytes == expected
            assert node_engine.holds(f"{record.reference.name}@{image.digest}")
            total += expected
        assert _sample(agent, "agent_pull_bytes_total", pool="cpu") == total
        assert _sample(agent, "image_pulls_total", pool="cpu", result="success") == 4
        assert _sample(agent, "agent_images_wanted", pool="cpu") == 4
        assert _sample(agent, "agent_images_present", pool="cpu") == 4
        assert _sample(agent, "image_pull_duration_seconds_count", pool="cpu") == 4

    # The engine presented the reader's credentials for the private repository.
    readers = [
        r
        for r in token_registry.token_server.requests
        if any(private_repo in scope for scope in r.scopes)
        and r.user == token_registry.credentials[0]  # type: ignore[index]
    ]
    assert readers, token_registry.token_server.requests
    assert all(r.status == 200 for r in readers)

    async with open_agent(config, "cpu", node_engine.kind, node_engine.address) as second:
        report = await second.run_round()
        assert report.complete
        assert report.pulled == ()
        assert len(report.skipped) == 4
        assert _sample(second, "agent_pull_bytes_total", pool="cpu") == 0
        assert _sample(second, "image_pulls_total", pool="cpu", result="success") == 0
        assert _sample(second, "image_pulls_total", pool="cpu", result="skipped") == 4
        assert _sample(second, "agent_images_present", pool="cpu") == 4


async def test_parallel_pulls_overlap_within_the_limit_and_report_live_progress(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "parallel")
    repos = [f"agent-{node_engine.id}/parallel-{index}" for index in range(3)]
    images = _push_images(
        open_registry, image_factory, salt, repos, layer_sizes=(1_200_000, 600_000)
    )
    with registry_proxy(open_registry) as proxy:
        proxy.rate_bytes_per_second = 1_000_000  # each image takes ~2 s through the proxy
        node_engine.add_registry(proxy.host, proxy.url)
        config = write_agent_config(
            tmp_path / "config.yaml",
            pools={"cpu": [f"{proxy.host}/{repo}:1" for repo in repos]},
            registries={proxy.host: (proxy.url, None)},
        )
        async with open_agent(
            config, "cpu", node_engine.kind, node_engine.address, max_parallel_pulls=2
        ) as agent:
            recorder = _Recorder()
            agent.view = recorder
            report = await agent.run_round()

    assert report.complete, agent.status()
    assert agent.max_active_pulls == 2
    spans = []
    for repo, image in images.items():
        record = _record(agent, repo)
        assert record.last_pull_bytes == image.manifest_for("linux/amd64").size_bytes
        assert record.last_pulled_at is not None
        assert record.last_pull_seconds is not None
        spans.append((record.last_pulled_at - record.last_pull_seconds, record.last_pulled_at))
        shown = [done for _, done, _, _ in recorder.samples[record.image]]
        assert shown == sorted(shown), "progress went backwards"
        assert shown[-1] == record.last_pull_bytes
        if node_engine.kind is EngineKind.DOCKER:
            # podman reports bytes while they arrive: some frame shows a partial download.
            assert any(0 < done < shown[-1] for done in shown), shown
    spans.sort()
    assert spans[1][0] < spans[0][1], f"the first two pulls did not overlap: {spans}"
    pulling_seconds = max(end for _, end in spans) - spans[0][0]
    one_after_another_seconds = sum(end - start for start, end in spans)
    assert pulling_seconds < 0.85 * one_after_another_seconds, spans


async def test_image_that_disappears_mid_pull_fails_as_gone_and_others_still_arrive(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    own_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "gone")
    gone_repo, kept_repo = "vanishing/app", "staying/app"
    _push_images(own_registry, image_factory, salt, [kept_repo, gone_repo])
    with registry_proxy(own_registry) as proxy:
        node_engine.add_registry(proxy.host, proxy.url)
        proxy.stalled_repos = {gone_repo}
        config = write_agent_config(
            tmp_path / "config.yaml",
            pools={"cpu": [f"{proxy.host}/{kept_repo}:1", f"{proxy.host}/{gone_repo}:1"]},
            registries={proxy.host: (proxy.url, None)},
        )
        # One pull at a time, the kept image first: the restart happens while only the
        # vanishing image is in flight.
        async with open_agent(
            config,
            "cpu",
            node_engine.kind,
            node_engine.address,
            retries=2,
            retry_base_seconds=0.2,
            max_parallel_pulls=1,
        ) as agent:
            round_task = asyncio.ensure_future(agent.run_round())
            assert await asyncio.to_thread(proxy.wait_for_stall), "the pull never started"
            # The registry restarts without the repository while a blob is half sent.
            own_registry.stop()
            shutil.rmtree(own_registry.storage_dir / "docker/registry/v2/repositories/vanishing")
            own_registry.start()
            proxy.release()
            report = await asyncio.wait_for(round_task, 120)

            gone, kept = _record(agent, gone_repo), _record(agent, kept_repo)
            assert kept.state is ImageState.PRESENT, kept.last_error
            assert gone.state is ImageState.FAILED, agent.status()
            assert gone.last_error_reason == "not_found", gone.last_error
            assert report.failed == (gone.image,)
            assert not node_engine.holds(f"{gone.reference.name}@{gone.digest}")
            assert _sample(agent, "image_pulls_total", pool="cpu", result="failure") == 1
            assert _sample(agent, "image_pulls_total", pool="cpu", result="success") == 1
            assert _sample(agent, "agent_images_present", pool="cpu") == 1

            # Next round: the registry no longer knows the tag, so no pull is even tried.
            again = await agent.run_round()
            assert again.pulled == ()
            assert gone.state is ImageState.UNRESOLVED
            assert gone.last_error_reason in {"RepositoryNotFoundError", "TagNotFoundError"}
            assert "vanishing/app" in (gone.last_error or "")
            assert _sample(agent, "image_pulls_total", pool="cpu", result="failure") == 1


async def test_stalled_registry_fails_one_pull_in_bounded_time_then_recovers(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "stall")
    stuck_repo, fine_repo = f"agent-{node_engine.id}/stuck", f"agent-{node_engine.id}/fine"
    _push_images(open_registry, image_factory, salt, [stuck_repo, fine_repo])
    with registry_proxy(open_registry) as proxy:
        node_engine.add_registry(proxy.host, proxy.url)
        proxy.stalled_repos = {stuck_repo}
        config = write_agent_config(
            tmp_path / "config.yaml",
            pools={"cpu": [f"{proxy.host}/{stuck_repo}:1", f"{proxy.host}/{fine_repo}:1"]},
            registries={proxy.host: (proxy.url, None)},
        )
        # Docker API: the stream goes quiet and is cut; CRI: the pull deadline passes.
        async with open_agent(
            config,
            "cpu",
            node_engine.kind,
            node_engine.address,
            retries=1,
            retry_base_seconds=0.2,
            stall_timeout_seconds=2.0,
            pull_timeout_seconds=4.0,
        ) as agent:
            started = time.monotonic()
            report = await agent.run_round()
            elapsed = time.monotonic() - started

            stuck, fine = _record(agent, stuck_repo), _record(agent, fine_repo)
            assert fine.state is ImageState.PRESENT
            assert stuck.state is ImageState.FAILED
            expected_reason = "stalled" if node_engine.kind is EngineKind.DOCKER else "timeout"
            assert stuck.last_error_reason == expected_reason, stuck.last_error
            assert stuck.attempts == 2
            assert report.failed == (stuck.image,)
            assert elapsed < 30, elapsed
            assert proxy.blob_requests[stuck_repo] >= 2

            proxy.release()
            again = await agent.run_round()
            assert again.complete, agent.status()
            assert again.pulled == (stuck.pinned,)
            assert node_engine.holds(stuck.pinned or "")


async def test_moved_tag_is_pulled_and_only_the_agents_own_old_digest_removed(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "moves")
    ours, theirs = f"agent-{node_engine.id}/moving", f"agent-{node_engine.id}/moving-outside"
    first = _push_images(open_registry, image_factory, f"{salt}:v1", [ours, theirs])
    # Someone else (a kubelet, a person) pulled `theirs` before the agent ran.
    node_engine.pull_outside(open_registry.reference(theirs, "1"))
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": [open_registry.reference(ours, "1"), open_registry.reference(theirs, "1")]},
        registries=dict([registry_entry(open_registry)]),
    )
    async with open_agent(
        config, "cpu", node_engine.kind, node_engine.address, remove_replaced=True
    ) as agent:
        report = await agent.run_round()
        ours_first = f"{open_registry.host}/{ours}@{first[ours].digest}"
        theirs_first = f"{open_registry.host}/{theirs}@{first[theirs].digest}"
        if node_engine.kind is EngineKind.DOCKER:
            assert (report.pulled, report.skipped) == ((ours_first,), (theirs_first,))
        else:
            # CRI knows a tag pull only under the tag, so the digest is pulled (from local
            # content), as a kubelet starting a pod pinned to the digest would do.
            assert sorted(report.pulled) == sorted((ours_first, theirs_first))

        second = _push_images(open_registry, image_factory, f"{salt}:v2", [ours, theirs])
        report = await agent.run_round()

        assert report.complete
        assert sorted(report.pulled) == sorted(
            f"{open_registry.host}/{repo}@{second[repo].digest}" for repo in (ours, theirs)
        )
        # Only the digest the agent itself pulled is removed; the one pulled outside stays.
        assert report.removed == (ours_first,)
        assert not node_engine.holds(ours_first)
        assert node_engine.holds(theirs_first)
        for repo in (ours, theirs):
            record = _record(agent, repo)
            assert record.digest == second[repo].digest
            assert node_engine.holds(f"{open_registry.host}/{repo}@{second[repo].digest}")


async def test_wrong_credentials_pull_nothing_and_say_so(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    token_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "creds")
    repo = f"agent-{node_engine.id}/locked"
    image = image_factory.build(layer_sizes=LAYER_SIZES, salt=salt)
    digest = token_registry.push(image, repo, "1")
    assert token_registry.token_server is not None
    assert token_registry.credentials is not None
    token_registry.token_server.add_private(repo)
    user = token_registry.credentials[0]
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": [token_registry.reference(repo, "1")]},
        registries={token_registry.host: (token_registry.url, (user, "not-the-password"))},
    )
    async with open_agent(config, "cpu", node_engine.kind, node_engine.address) as agent:
        report = await agent.run_round()
        record = agent.records[0]
        assert report.failed == (record.image,)
        assert record.state is ImageState.UNRESOLVED
        assert record.last_error_reason == "CredentialsRefusedError", record.last_error
        assert "not-the-password" not in (record.last_error or "")
        assert _sample(agent, "image_pulls_total", pool="cpu", result="failure") == 0

    # The engine itself refuses too, when handed the wrong password or none at all.
    engine = open_engine(node_engine.kind, node_engine.address)
    try:
        for credentials in ((user, "not-the-password"), None):
            target = PullTarget(
                name=f"{token_registry.host}/{repo}", digest=digest, credentials=credentials
            )
            with pytest.raises(ImagePullError) as caught:
                await engine.pull(target, lambda done, total: None)
            assert (caught.value.reason, caught.value.temporary) in {
                ("unauthorized", False),
                ("not_found", False),  # containerd words an anonymous 401 as "not found"
            }, caught.value
    finally:
        await engine.close()
    assert not node_engine.holds(f"{token_registry.host}/{repo}@{digest}")


async def test_missing_engine_socket_is_reported_not_hung(
    node_engine: NodeEngine, open_registry: RunningRegistry, tmp_path: Path
) -> None:
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={"cpu": [open_registry.reference("agent/none", "1")]},
        registries=dict([registry_entry(open_registry)]),
    )
    address = f"unix://{tmp_path / 'no-such.sock'}"
    async with open_agent(config, "cpu", node_engine.kind, address) as agent:
        with pytest.raises(EngineUnavailableError) as caught:
            await asyncio.wait_for(agent.run_round(), 60)
        assert "no-such.sock" in str(caught.value)


async def test_two_tags_of_one_image_are_pulled_once(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    repo = f"agent-{node_engine.id}/two-tags"
    image = image_factory.build(layer_sizes=LAYER_SIZES, salt=_salt(request, node_engine, "two"))
    digest = open_registry.push(image, repo, "2023.09.12")
    assert open_registry.push(image, repo, "latest") == digest
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={
            "cpu": [
                open_registry.reference(repo, "latest"),
                open_registry.reference(repo, "2023.09.12"),
            ]
        },
        registries=dict([registry_entry(open_registry)]),
    )
    async with open_agent(config, "cpu", node_engine.kind, node_engine.address) as agent:
        report = await agent.run_round()
        pinned = f"{open_registry.host}/{repo}@{digest}"
        assert (report.pulled, report.skipped) == ((pinned,), (pinned,))
        assert (
            _sample(agent, "agent_pull_bytes_total", pool="cpu")
            == image.manifest_for("linux/amd64").size_bytes
        )
        assert _sample(agent, "agent_images_present", pool="cpu") == 2


async def test_shared_layers_are_not_counted_twice(
    request: pytest.FixtureRequest,
    node_engine: NodeEngine,
    open_registry: RunningRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    salt = _salt(request, node_engine, "shared")
    base = image_factory.build(layer_sizes=LAYER_SIZES, salt=salt)
    extended = image_factory.build(
        layer_sizes=LAYER_SIZES, salt=salt, files={"/extra": b"x" * 5000}
    )
    base_repo, extended_repo = f"agent-{node_engine.id}/base", f"agent-{node_engine.id}/extended"
    open_registry.push(base, base_repo, "1")
    open_registry.push(extended, extended_repo, "1")
    extended_layers = {layer.digest for layer in extended.manifests[0].layers}
    shared = sum(
        layer.size_bytes for layer in base.manifests[0].layers if layer.digest in extended_layers
    )
    assert shared > 0, "the two images share no layer"
    config = write_agent_config(
        tmp_path / "config.yaml",
        pools={
            "cpu": [
                open_registry.reference(base_repo, "1"),
                open_registry.reference(extended_repo, "1"),
            ]
        },
        registries=dict([registry_entry(open_registry)]),
    )
    async with open_agent(
        config, "cpu", node_engine.kind, node_engine.address, max_parallel_pulls=1
    ) as agent:
        report = await agent.run_round()
        assert report.complete
        records = {repo: _record(agent, repo) for repo in (base_repo, extended_repo)}
        sizes = {
            base_repo: base.manifest_for("linux/amd64").size_bytes,
            extended_repo: extended.manifest_for("linux/amd64").size_bytes,
        }
        # One slot, taken in pool order: the second image finds the shared layers.
        first, second = sorted(records, key=lambda repo: records[repo].last_pulled_at or 0)
        assert (first, second) == (base_repo, extended_repo)
        assert records[first].last_pull_bytes == sizes[first]
        counted = records[second].last_pull_bytes
        assert counted is not None
        if node_engine.kind is EngineKind.DOCKER:
            # podman says "Already exists" for the shared layers: they are not counted, and
            # the count is flagged as a lower bound since the new blobs carried no byte counts.
            assert counted <= sizes[second] - shared
            assert records[second].last_pull_exact is False
            assert (
                _sample(agent, "agent_pull_bytes_total", pool="cpu") <= sum(sizes.values()) - shared
            )
        else:
            # CRI tells nothing about reuse: the count is the image's compressed size.
            assert counted == sizes[second]
