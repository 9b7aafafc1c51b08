"""Pull the same image set through the node agent (parallel) and through the engines' own CLIs
one image after another, in one run, each side on fresh engine storage (loopback only).

    python3 bench/bench_agent.py [--images N] [--layer-mib A,B,C] [--link-mbps M] [--parallel P]

Sides, each pulling all N images from one local registry into an engine that holds nothing:

* podman's Docker API service: ``imagewarden agent`` logic (NodeAgent + DockerEngine) with
  P parallel pulls and with 1, next to ``podman pull`` run once per image;
* containerd: the agent over CRI with P and with 1, next to ``ctr images pull`` once per image.

``--link-mbps`` puts a proxy in front of the registry that limits every blob connection to
that rate, like a remote registry whose per-connection throughput is bounded by latency (the
usual case on the internet); without it the loopback registry is as fast as the disk and CPUs.
Prints one table: wall seconds, MB/s of compressed bytes, and how many times faster than the
engine's own CLI pulling one image after another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagewarden.config import load_config
from imagewarden.metrics import Metrics
from imagewarden.prepull.agent import AgentSettings, NodeAgent
from imagewarden.prepull.engines import EngineKind, open_engine
from imagewarden.registry import RegistryClient
from tests.support.agent_fixtures import RegistryProxy, write_agent_config
from tests.support.containerd import Containerd, start_containerd, wait_for_cri
from tests.support.images import ImageFactory
from tests.support.podman import PodmanService, start_podman_service
from tests.support.registry import start_registry


@contextlib.contextmanager
def fresh_podman(root: Path) -> Iterator[PodmanService]:
    service = start_podman_service(root)
    try:
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def fresh_containerd(root: Path, host: str, url: str) -> Iterator[Containerd]:
    node = start_containerd(root)
    try:
        node.add_registry(host, url)
        asyncio.run(wait_for_cri(node))
        yield node
    finally:
        node.stop()


async def agent_pull(
    config: Path, engine: EngineKind, address: str, parallel: int
) -> tuple[float, int, int]:
    """(seconds, compressed bytes, images pulled) for one agent round on an empty engine."""
    settings = load_config(config)
    images = list(settings.prepull.pools["bench"].images)
    agent_settings = AgentSettings(
        pool="bench",
        engine=engine,
        engine_address=address,
        max_parallel_pulls=parallel,
        listen_port=None,
    )
    metrics = Metrics()
    engine_client = open_engine(engine, address, max_parallel_pulls=parallel)
    async with RegistryClient(settings, metrics=metrics) as client:
        agent = NodeAgent(
            images, agent_settings, resolver=client, engine=engine_client, metrics=metrics
        )
        try:
            await engine_client.version()  # connecting is not part of pulling
            started = time.perf_counter()
            report = await agent.run_round()
            seconds = time.perf_counter() - started
        finally:
            await agent.close()
    if not report.complete:
        raise SystemExit(f"agent did not pull everything: {agent.status()}")
    pulled = sum(record.last_pull_bytes or 0 for record in agent.records)
    return seconds, pulled, len(report.pulled)


def cli_pull(references: list[str], pull: Callable[[str], None]) -> float:
    started = time.perf_counter()
    for reference in references:
        pull(reference)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--layer-mib", default="12,6,3", help="layer sizes per image, MiB")
    parser.add_argument("--link-mbps", type=float, default=None, help="per-connection MB/s")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    layer_sizes = [int(float(size) * 1024 * 1024) for size in args.layer_mib.split(",")]

    rows: list[tuple[str, str, int, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="iw-bench-agent-") as scratch_name:
        scratch = Path(scratch_name)
        registry = start_registry(scratch / "registry", mode="open")
        proxy = None
        try:
            factory = ImageFactory(scratch / "layouts")
            repos = [f"bench/image-{index}" for index in range(args.images)]
            for repo in repos:
                image = factory.build(layer_sizes=layer_sizes, salt=f"bench:{repo}")
                registry.push(image, repo, "1")
            host, url = registry.host, registry.url
            if args.link_mbps:
                proxy = RegistryProxy(registry.url).start()
                proxy.rate_bytes_per_second = args.link_mbps * 1_000_000
                host, url = proxy.host, proxy.url
            references = [f"{host}/{repo}:1" for repo in repos]
            config = write_agent_config(
                scratch / "config.yaml",
                pools={"bench": references},
                registries={host: (url, None)},
            )

            for parallel in (args.parallel, 1):
                with fresh_podman(scratch / f"podman-agent-{parallel}") as service:
                    seconds, size, count = asyncio.run(
                        agent_pull(config, EngineKind.DOCKER, service.base_url, parallel)
                    )
                rows.append(("podman", f"agent, {parallel} at once", count, size, seconds))
            with fresh_podman(scratch / "podman-cli") as service:
                seconds = cli_pull(
                    references,
                    lambda ref, svc=service: (
                        svc.cli("pull", "-q", "--tls-verify=false", ref) and None
                    ),
                )
            rows.append(("podman", "podman pull, one by one", len(references), size, seconds))

            for parallel in (args.parallel, 1):
                with fresh_containerd(scratch / f"ctd-agent-{parallel}", host, url) as node:
                    seconds, size, count = asyncio.run(
                        agent_pull(config, EngineKind.CRI, node.address, parallel)
                    )
                rows.append(
                    ("containerd", f"agent (CRI), {parallel} at once", count, size, seconds)
                )
            with fresh_containerd(scratch / "ctd-cli", host, url) as node:
                seconds = cli_pull(references, lambda ref, n=node: n.pull_with_ctr(ref) and None)
            rows.append(
                ("containerd", "ctr images pull, one by one", len(references), size, seconds)
            )
        finally:
            if proxy is not None:
                proxy.stop()
            registry.close()
            subprocess.run(["sync"], check=False)

    link = f"{args.link_mbps:g} MB/s per connection" if args.link_mbps else "loopback, unthrottled"
    print(
        f"\n{args.images} images x {len(layer_sizes)} layers ({args.layer_mib} MiB), "
        f"registry: {link}\n"
    )
    header = (
        f"{'engine':<11} {'method':<30} {'images':>6} {'MB':>8} {'seconds':>8} {'MB/s':>7} "
        f"{'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    baseline = {engine: seconds for engine, method, _, _, seconds in rows if "one by one" in method}
    for engine, method, count, size, seconds in rows:
        ratio = baseline[engine] / seconds
        print(
            f"{engine:<11} {method:<30} {count:>6} {size / 1e6:>8.1f} {seconds:>8.2f} "
            f"{size / 1e6 / seconds:>7.1f} {ratio:>8.2f}x"
        )


if __name__ == "__main__":
    main()
