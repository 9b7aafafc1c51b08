"""The service under 1,000 concurrent checks over 50 images, from a separate process (CI-sized).

The test seeds 50 images (distinct digests) into the session's open registry, starts
``imagewarden serve`` as its own process with a 4 s tag TTL, and runs ``bench/load_service.py``
against it as another process: first a spawn storm (1,000 checks of one new image at once), then
10 s with 1,000 checks always in flight round-robin over the 50 images. It asserts

- no client error, only 200 answers, every verdict allowed with the image's exact digest;
- the service's RSS (``VmRSS`` from ``/proc``) stays bounded and does not grow during the load;
- at the registry (its own log): one manifest HEAD for the storm; for each image one HEAD per
  TTL window (consecutive HEADs a TTL apart, never closer; refreshed while asked), each index
  fetched once.

``scripts/load-long.sh`` runs the same for 60 s and prints the table.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support.registry import RunningRegistry, free_port

ROOT = Path(__file__).resolve().parent.parent
LOAD_SCRIPT = ROOT / "bench" / "load_service.py"
CONCURRENCY = 1000
IMAGES = 50
DURATION_SECONDS = 10
TTL_SECONDS = 4
MAX_RSS_MIB = 256
MAX_RSS_GROWTH_MIB = 32


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_service", LOAD_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_1000_concurrent_checks_over_50_images(
    open_registry: RunningRegistry, tmp_path: Path
) -> None:
    bench = _load_bench()
    seeded = bench.seed_images(open_registry, tmp_path, count=IMAGES, repos=5)
    config = bench.write_config(
        tmp_path / "imagewarden.yaml", open_registry.url, ttl_seconds=TTL_SECONDS
    )
    images_file = tmp_path / "images.json"
    images_file.write_text(json.dumps(seeded.images))
    port = free_port()
    service = bench.start_service(config, port, tmp_path / "service.log")
    try:
        offset = bench.log_offset(open_registry)
        generator = subprocess.run(
            [
                sys.executable,
                str(LOAD_SCRIPT),
                "--url",
                f"http://127.0.0.1:{port}",
                "--images-file",
                str(images_file),
                "--service-pid",
                str(service.pid),
                "--storm-image",
                seeded.storm_image,
                "--storm-digest",
                seeded.storm_digest,
                "--concurrency",
                str(CONCURRENCY),
                "--duration",
                str(DURATION_SECONDS),
                "--ttl",
                str(TTL_SECONDS),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        counts = bench.count_requests(
            open_registry,
            {**seeded.images, seeded.storm_image: seeded.storm_digest},
            offset=offset,
        )
        assert service.poll() is None, "the service died under load"
    finally:
        bench.stop_service(service)
    assert generator.stdout, generator.stderr[-2000:]
    document: dict[str, Any] = json.loads(generator.stdout)
    storm, load = bench.Phase(**document["storm"]), bench.Phase(**document["load"])
    report = bench.Report(storm, load, TTL_SECONDS, IMAGES, counts, storm_image=seeded.storm_image)
    report.check(MAX_RSS_MIB)
    print(report.table())

    for phase in (storm, load):
        assert (phase.errors, phase.wrong_verdicts) == (0, 0), phase.problems
        assert set(phase.statuses) == {"200"}
    assert storm.requests == CONCURRENCY
    assert load.requests >= CONCURRENCY
    assert set(load.answered) == set(seeded.images)

    rss_mib = [value / 1024 for _, value in load.rss_kib]
    assert len(rss_mib) >= DURATION_SECONDS  # sampled all along
    assert max(rss_mib) < MAX_RSS_MIB
    assert rss_mib[-1] - rss_mib[0] < MAX_RSS_GROWTH_MIB

    assert len(counts.heads[seeded.storm_image]) == 1
    assert bench.registry_invariants(counts, load, TTL_SECONDS, seeded.storm_image) == []
    assert report.failures == []
    assert generator.returncode == 0, generator.stderr[-2000:]
