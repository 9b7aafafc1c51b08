"""Time per check: imagewarden in-process (cold, revalidating, cached) and as a CLI, next to
``skopeo inspect``, in one run against the same local token-auth registry (loopback only).

    python3 bench/bench_checker.py [--rounds N]

Prints one table with the median and p90 per variant and the ratio of medians to skopeo.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagewarden.checker import Checker
from imagewarden.config import Settings, parse_settings
from imagewarden.registry import RegistryClient
from tests.support.images import ImageFactory
from tests.support.registry import RunningRegistry, start_registry

REPO, TAG = "pangeo/pangeo-notebook", "2023.09.11"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def time_async(rounds: int, action: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - started)
    return samples


def time_command(rounds: int, command: list[str]) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return samples


async def measure(
    registry: RunningRegistry, settings: Settings, rounds: int, config: Path
) -> dict[str, list[float]]:
    image = f"quay.io/{REPO}:{TAG}"
    results: dict[str, list[float]] = {}

    async def cold() -> None:
        async with RegistryClient(settings) as client:
            verdict = await Checker(settings, client).check(image)
            assert verdict.allowed, verdict.reason

    results["imagewarden in-process, cold (new session, token, HEAD, GETs)"] = await time_async(
        rounds, cold
    )
    async with RegistryClient(settings) as client:
        warm_client = Checker(settings, client)
        await warm_client.check(image)

        async def revalidate() -> None:
            warm_client._cache.entries.clear()  # tag TTL expired: HEAD only, documents cached
            await warm_client.check(image)

        results["imagewarden in-process, tag TTL expired (1 HEAD)"] = await time_async(
            rounds, revalidate
        )
        results["imagewarden in-process, cached verdict"] = await time_async(
            rounds * 10, lambda: warm_client.check(image)
        )
    imagewarden = shutil.which("imagewarden") or "imagewarden"
    results["imagewarden check CLI (process start + cold check)"] = time_command(
        rounds, [imagewarden, "check", "--config", str(config), image]
    )
    results["skopeo inspect (process start + cold check)"] = time_command(
        rounds,
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.host}/{REPO}:{TAG}"],
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-checker-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry", mode="token")
        try:
            registry.push(ImageFactory(work / "images").multi_platform(salt="bench"), REPO, TAG)
            config = work / "imagewarden.yaml"
            config.write_text(f"registries:\n  quay.io: {{endpoint: '{registry.url}'}}\n")
            settings = parse_settings({"registries": {"quay.io": {"endpoint": registry.url}}})
            results = asyncio.run(measure(registry, settings, args.rounds, config))
        finally:
            registry.close()
    skopeo = statistics.median(results["skopeo inspect (process start + cold check)"])
    print(f"check time per image, local token-auth registry, {args.rounds} rounds")
    print(f"{'variant':<62} {'median ms':>10} {'p90 ms':>9} {'vs skopeo':>10}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"{name:<62} {median * 1000:>10.2f} {percentile(samples, 0.9) * 1000:>9.2f} "
            f"{median / skopeo:>9.3f}x"
        )


if __name__ == "__main__":
    main()
