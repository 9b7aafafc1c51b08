"""Check latency and throughput through the checker service (``imagewarden serve``), next to
``skopeo inspect`` for the same image on the same local token-auth registry (loopback only).

    python3 bench/bench_service.py [--rounds N] [--requests N] [--concurrency C]

Sides, in one run:

* the service as a real process, asked over HTTP by one keep-alive client, one check at a time:
  cold (a tag it has never seen, a distinct image per tag: HEAD + index, manifest and config
  GETs at the registry; the pull token is already cached),
  revalidating (``tag_ttl_seconds: 0``, so every check HEADs the tag; documents are cached) and
  warm (cached verdict);
* the hub's HTTP backend (:class:`imagewarden.hub.HttpBackend`): what ``pre_spawn_hook`` waits
  for, cached verdict;
* throughput on cached verdicts: ``--requests`` checks from ``--concurrency`` connections;
* ``skopeo inspect`` of the same tag (process start + token + manifest), one after another.

Client, service and registry share this machine's cores, so throughput is a floor. Prints one
table: p50 and p99 per variant, checks per second, and the p50 ratio to skopeo.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagewarden.hub import HttpBackend
from tests.support.images import ImageFactory
from tests.support.registry import RunningRegistry, free_port, start_registry

REPO = "pangeo/pangeo-notebook"
TOKEN = "bench-service-token"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def serve(work: Path, registry: RunningRegistry, *, tag_ttl_seconds: float) -> Iterator[str]:
    """``imagewarden serve`` with quay.io at ``registry``; yields its URL, stops it by PID."""
    config = work / f"service-ttl{tag_ttl_seconds:g}.yaml"
    token_file = work / "token"
    token_file.write_text(TOKEN)
    config.write_text(
        yaml.safe_dump(
            {
                "registries": {"quay.io": {"endpoint": registry.url}},
                "checker": {"tag_ttl_seconds": tag_ttl_seconds},
                "service": {"token_file": str(token_file)},
            }
        )
    )
    port = free_port()
    log = (work / f"serve-{port}.log").open("wb")
    command = [sys.executable, "-m", "imagewarden.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("imagewarden serve did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def sequential(
    rounds: int, action: Callable[[int], Awaitable[object]]
) -> tuple[list[float], float]:
    samples = []
    started_all = time.perf_counter()
    for index in range(rounds):
        started = time.perf_counter()
        await action(index)
        samples.append(time.perf_counter() - started)
    return samples, rounds / (time.perf_counter() - started_all)


async def check(session: aiohttp.ClientSession, url: str, image: str) -> None:
    async with session.post(f"{url}/api/v1/check", json={"image": image}) as response:
        verdict = await response.json()
    if response.status != 200 or not verdict["allowed"]:
        raise RuntimeError(f"{image}: {response.status} {verdict}")


async def measure_service(
    url: str, revalidating_url: str, rounds: int, requests: int, concurrency: int
) -> dict[str, tuple[list[float], float]]:
    results: dict[str, tuple[list[float], float]] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        await check(session, url, f"quay.io/{REPO}:warmup")  # token and session warm
        results["service, cold (new tag: HEAD + GETs)"] = await sequential(
            rounds, lambda i: check(session, url, f"quay.io/{REPO}:t{i}")
        )
        await check(session, revalidating_url, f"quay.io/{REPO}:t0")
        results["service, tag TTL 0 (1 HEAD per check)"] = await sequential(
            rounds, lambda i: check(session, revalidating_url, f"quay.io/{REPO}:t0")
        )
        results["service, warm (cached verdict)"] = await sequential(
            rounds * 10, lambda i: check(session, url, f"quay.io/{REPO}:t0")
        )
    backend = HttpBackend(url, token=TOKEN)
    try:

        async def via_hub(index: int) -> None:
            verdict = await backend.check(f"quay.io/{REPO}:t0", profile=None)
            assert verdict.allowed

        results["hub HttpBackend -> service, warm"] = await sequential(rounds * 10, via_hub)
    finally:
        await backend.aclose()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        latencies: list[float] = []
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                await check(session, url, f"quay.io/{REPO}:t0")
                latencies.append(time.perf_counter() - started)

        started_all = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started_all
        results[f"service, warm, {concurrency} concurrent"] = (latencies, requests / elapsed)
    return results


def measure_skopeo(registry: RunningRegistry, rounds: int) -> tuple[list[float], float]:
    command = ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.host}/{REPO}:t0"]
    samples = []
    started_all = time.perf_counter()
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples, rounds / (time.perf_counter() - started_all)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="sequential checks per variant")
    parser.add_argument("--requests", type=int, default=20000, help="checks in the load run")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry", mode="token")
        try:
            # A distinct image per tag, so "cold" fetches every manifest, not only the HEAD.
            factory = ImageFactory(work / "images")
            tags = ["warmup", *(f"t{i}" for i in range(args.rounds))]
            images = {tag: factory.multi_platform(salt=f"bench-service-{tag}") for tag in tags}
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda tag: registry.push(images[tag], REPO, tag), tags))
            with (
                serve(work, registry, tag_ttl_seconds=60) as url,
                serve(work, registry, tag_ttl_seconds=0) as revalidating_url,
            ):
                results = asyncio.run(
                    measure_service(
                        url, revalidating_url, args.rounds, args.requests, args.concurrency
                    )
                )
            results["skopeo inspect (process start + check)"] = measure_skopeo(
                registry, args.rounds
            )
        finally:
            registry.close()
    skopeo = statistics.median(results["skopeo inspect (process start + check)"][0])
    print(
        f"checks through imagewarden serve vs skopeo inspect, local token-auth registry, "
        f"{os.cpu_count()} cores shared by client, service and registry"
    )
    print(
        f"{'variant':<42} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'checks/s':>9} "
        f"{'p50 vs skopeo':>14}"
    )
    for name, (samples, rate) in results.items():
        median = statistics.median(samples)
        print(
            f"{name:<42} {len(samples):>6} {median * 1000:>8.2f} "
            f"{percentile(samples, 0.99) * 1000:>8.2f} {rate:>9.0f} {median / skopeo:>13.4f}x"
        )


if __name__ == "__main__":
    main()
