"""Load the checker service from a separate process: many concurrent checks over many images.

    python3 bench/load_service.py [--duration 60] [--concurrency 1000] [--images 50] [--ttl 8]
    python3 bench/load_service.py --url URL --images-file FILE [--service-pid PID] [--json] ...

Self-contained (the default), it starts a local open registry (loopback only), seeds ``--images``
tags with distinct digests over a few repositories, starts ``imagewarden serve`` as its own
process with ``tag_ttl_seconds: --ttl``, and then, from this process:

1. **spawn storm**: ``--concurrency`` checks of one image nobody asked for before, all at once;
   the registry must see exactly one manifest HEAD for it (single-flight);
2. **steady load**: ``--concurrency`` checks always in flight, round-robin over the images, for
   ``--duration`` seconds, while sampling the service's ``VmRSS`` from ``/proc/PID/status``.

Then it counts at the registry (its own access log): manifest HEADs per image must equal the
number of TTL windows the run spans (``1 + floor(duration / ttl)``; pick a duration that is not
close to a multiple of the TTL), and manifest GETs must equal the distinct digests (documents
are immutable and fetched once). It prints one table (p50/p99, throughput, RSS, request counts)
and exits 1 when an invariant fails: an error, a non-200 answer, a wrong verdict or digest, a
registry count off, or RSS above ``--max-rss-mib``.

With ``--url`` it only generates load against a running service (``tests/test_load.py`` starts
the service and counts at the registry itself); ``--images-file`` is JSON ``{image: digest}``.
``--json`` prints the measurements as one JSON document instead of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.images import OCI_INDEX, ImageFactory
from tests.support.registry import (
    MANIFEST_ACCEPT,
    RunningRegistry,
    free_port,
    http_request,
    start_registry,
)

REPO_PREFIX = "load/app"
STORM_TAG = "storm"
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
RSS_SAMPLE_SECONDS = 0.2
CLOCK_SLACK_SECONDS = 0.05
"""Registry log times are response completion times; the cache's clock starts a moment later."""
REFRESH_LAG_SECONDS = 3.0
"""Longest a refresh may follow the TTL on a saturated 2-core machine: the fetch itself, plus
waiting for the next check of that image, plus event-loop queueing."""


# --- registry side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """The images the load asks for, as the service names them, and their digests."""

    images: dict[str, str]
    """``quay.io/load/app-K:tN`` -> top-level digest."""
    storm_image: str
    storm_digest: str
    repos: tuple[str, ...]


def _put_index(registry: RunningRegistry, repo: str, tag: str, index: dict[str, Any]) -> str:
    raw = json.dumps(index, separators=(",", ":")).encode()
    status, _, body = http_request(
        "PUT",
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        {"Content-Type": str(index.get("mediaType", OCI_INDEX))},
        data=raw,
    )
    if status != 201:
        raise RuntimeError(f"PUT {repo}:{tag} answered {status}: {body[:200]!r}")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def seed_images(registry: RunningRegistry, work: Path, *, count: int, repos: int) -> Seeded:
    """Push one multi-platform image into ``repos`` repositories, then tag ``count`` variants.

    Each tag is the pushed index with its own annotation, so every image has a distinct digest
    while the platform manifests and blobs are shared: seeding 50 images costs ``repos`` skopeo
    pushes and 50 small PUTs. Needs an open (no auth) registry.
    """
    repos = max(1, min(repos, count))
    image = ImageFactory(work / "images").multi_platform(salt="load-service")
    names = tuple(f"{REPO_PREFIX}-{k}" for k in range(repos))
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda repo: registry.push(image, repo, "base"), names))
    status, _, body = http_request(
        "GET", f"{registry.url}/v2/{names[0]}/manifests/base", {"Accept": MANIFEST_ACCEPT}
    )
    if status != 200:
        raise RuntimeError(f"GET {names[0]}:base answered {status}")
    index = json.loads(body)
    images: dict[str, str] = {}
    for number in range(count):
        repo, tag = names[number % repos], f"t{number}"
        variant = dict(index, annotations={"org.imagewarden.load": str(number)})
        images[f"quay.io/{repo}:{tag}"] = _put_index(registry, repo, tag, variant)
    storm = dict(index, annotations={"org.imagewarden.load": STORM_TAG})
    storm_digest = _put_index(registry, names[0], STORM_TAG, storm)
    return Seeded(images, f"quay.io/{names[0]}:{STORM_TAG}", storm_digest, names)


@dataclass
class RegistryCounts:
    """Manifest requests the registry logged during the run."""

    heads: dict[str, list[float]]
    """image -> times (epoch seconds, registry clock) of the HEADs of its tag."""
    index_gets: dict[str, int]
    """image -> GETs of its (distinct) index digest."""
    other_gets: int
    """GETs of other manifests by digest (the platform manifests the indexes share)."""


# logrus text lines on the registry's stderr, one per response, with nanosecond times:
#   time="2026-11-25T19:19:26.560034552Z" level=info msg="response completed" ...
#   http.request.method=HEAD ... http.request.uri=/v2/load/app-0/manifests/t0 ...
# (values are quoted only when they hold spaces or quotes)
_RESPONSE_LINE = re.compile(
    r'^time="(?P<time>[^"]+)" .*?msg="response completed"'
    r'.*? http\.request\.method=(?P<method>[A-Z]+) .*? http\.request\.uri="?(?P<uri>[^"\s]+)"?'
)


def _epoch(stamp: str) -> float:
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def log_offset(registry: RunningRegistry) -> int:
    """Where the registry's response log ends now (count from here after the run)."""
    try:
        return registry.app_log_path.stat().st_size
    except FileNotFoundError:
        return 0


def count_requests(
    registry: RunningRegistry, images: dict[str, str], *, offset: int
) -> RegistryCounts:
    """Manifest requests for ``images`` (image -> digest) logged after ``offset``."""
    registry.request_log()  # waits until the registry has logged every answered request
    head_paths, get_paths = {}, {}
    for image, digest in images.items():
        repo, _, tag = image.removeprefix("quay.io/").rpartition(":")
        head_paths[f"/v2/{repo}/manifests/{tag}"] = image
        get_paths[f"/v2/{repo}/manifests/{digest}"] = image
    heads: dict[str, list[float]] = {image: [] for image in images}
    index_gets: Counter[str] = Counter()
    other_gets = 0
    with registry.app_log_path.open(errors="replace") as log:
        log.seek(offset)
        for line in log:
            match = _RESPONSE_LINE.match(line)
            if match is None:
                continue
            method, uri = match["method"], match["uri"]
            if method == "HEAD" and uri in head_paths:
                heads[head_paths[uri]].append(_epoch(match["time"]))
            elif method == "GET" and uri in get_paths:
                index_gets[get_paths[uri]] += 1
            elif method == "GET" and "/manifests/sha256:" in uri:
                other_gets += 1
    return RegistryCounts(
        {image: sorted(times) for image, times in heads.items()},
        {image: index_gets[image] for image in images},
        other_gets,
    )


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def registry_invariants(
    counts: RegistryCounts, load: Phase, ttl_seconds: float, storm_image: str | None
) -> list[str]:
    """What is wrong with the registry's counts (empty when they are right):

    - the storm image: one HEAD and one index GET, however many checks asked at once;
    - every load image: one HEAD per (image, TTL window). A window opens with the fetch that
      fills the cache and lasts ``ttl_seconds``, so consecutive HEADs of one image are at least
      a TTL apart (no duplicate in a window), yet at most a TTL plus ``REFRESH_LAG_SECONDS``
      apart while the image is still asked about (every expired window is refreshed), and the
      number of HEADs fits the span over which answers for it arrived;
    - each index fetched once (digests are immutable), shared platform manifests at most once
      per image, whatever the duration.
    """
    failures = []
    if storm_image is not None:
        storm = (len(counts.heads[storm_image]), counts.index_gets[storm_image])
        if storm != (1, 1):
            failures.append(f"spawn storm: {storm[0]} HEADs, {storm[1]} index GETs; expected 1, 1")
    too_close, too_far, miscounted = {}, {}, {}
    for image, (first, last) in load.answered.items():
        times = counts.heads[image]
        between = gaps(times)
        if between and min(between) < ttl_seconds - CLOCK_SLACK_SECONDS:
            too_close[image] = round(min(between), 3)
        if between and max(between) > ttl_seconds + REFRESH_LAG_SECONDS:
            too_far[image] = round(max(between), 3)
        span = last - first
        lowest = 1 + math.floor(
            max(0.0, span - REFRESH_LAG_SECONDS) / (ttl_seconds + REFRESH_LAG_SECONDS)
        )
        highest = 1 + math.floor((span + CLOCK_SLACK_SECONDS) / ttl_seconds)
        if not lowest <= len(times) <= highest:
            miscounted[image] = (len(times), lowest, highest, round(span, 2))
    if too_close:
        failures.append(f"two HEADs within one TTL window: {dict(list(too_close.items())[:3])}")
    if too_far:
        failures.append(f"an expired answer was not refreshed: {dict(list(too_far.items())[:3])}")
    if miscounted:
        failures.append(
            f"HEADs outside (low, high) for the span: {dict(list(miscounted.items())[:3])}"
        )
    refetched = {image: n for image, n in counts.index_gets.items() if n > 1}
    if refetched:
        failures.append(f"indexes fetched more than once: {dict(list(refetched.items())[:3])}")
    if counts.other_gets > len(counts.heads):
        failures.append(
            f"{counts.other_gets} platform manifest GETs for {len(counts.heads)} images"
        )
    return failures


# --- the service --------------------------------------------------------------------------------


def write_config(path: Path, registry_url: str, *, ttl_seconds: float) -> Path:
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "registries": {"quay.io": {"endpoint": registry_url}},
                "policy": {"allow": [f"quay.io/{REPO_PREFIX}-*"]},
                "checker": {"tag_ttl_seconds": ttl_seconds, "timeout_seconds": 10},
            }
        )
    )
    return path


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_service(config: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``imagewarden serve`` as its own process (file limit raised); waits for /readyz."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imagewarden.cli",
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_raise_file_limit,
        )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"imagewarden serve exited with {process.returncode}; see {log_path}"
            )
        try:
            if http_request("GET", f"http://127.0.0.1:{port}/readyz", timeout_seconds=1)[0] == 200:
                return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_service(process)
            raise RuntimeError(f"imagewarden serve not ready after {READY_TIMEOUT_SECONDS} s")
        time.sleep(0.05)


def stop_service(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL; always reaps the one process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_SECONDS)


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, from /proc (None when the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


# --- the load -----------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    seconds: float = 0.0
    concurrency: int = 0
    requests: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wrong_verdicts: int = 0
    problems: list[str] = field(default_factory=list)
    """Up to 5 examples of errors and wrong verdicts."""
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    checks_per_second: float = 0.0
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the phase started, VmRSS) samples of the service."""
    answered: dict[str, tuple[float, float]] = field(default_factory=dict)
    """image -> (first, last) time an answer for it arrived, in seconds since the phase
    started: the span over which the service was asked about it (queueing delay cancels)."""

    def summarize(self, latencies: list[float], started: float) -> None:
        """Percentiles and rate; ``started`` is the phase's perf_counter() start."""
        self.answered = {
            image: (round(first - started, 3), round(last - started, 3))
            for image, (first, last) in self.answered.items()
        }
        if latencies:
            ordered = sorted(latencies)
            self.p50_ms = statistics.median(ordered) * 1000
            self.p99_ms = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
            self.max_ms = ordered[-1] * 1000
        self.checks_per_second = self.requests / self.seconds if self.seconds else 0.0


async def _sample_rss(pid: int | None, phase: Phase, started: float, stop: asyncio.Event) -> None:
    while pid is not None:
        value = rss_kib(pid)
        if value is not None:
            phase.rss_kib.append((round(time.monotonic() - started, 2), value))
        try:
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_SECONDS)
            return
        except TimeoutError:
            continue


async def _ask(
    session: aiohttp.ClientSession,
    url: str,
    image: str,
    digest: str,
    phase: Phase,
    latencies: list[float],
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, json={"image": image}) as response:
            answer = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        phase.errors += 1
        if len(phase.problems) < 5:
            phase.problems.append(f"{image}: {type(error).__name__}: {error}")
        return
    finished = time.perf_counter()
    latencies.append(finished - started)
    first, _ = phase.answered.get(image, (finished, finished))
    phase.answered[image] = (first, finished)
    phase.requests += 1
    phase.statuses[str(status)] = phase.statuses.get(str(status), 0) + 1
    if status != 200 or not answer.get("allowed") or answer.get("digest") != digest:
        phase.wrong_verdicts += 1
        if len(phase.problems) < 5:
            phase.problems.append(f"{image}: {status} {str(answer)[:200]}")


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def storm(url: str, image: str, digest: str, concurrency: int, pid: int | None) -> Phase:
    """``concurrency`` checks of one image, all sent at once."""
    phase = Phase("spawn storm", concurrency=concurrency)
    latencies: list[float] = []
    stop = asyncio.Event()
    started, counter = time.monotonic(), time.perf_counter()
    sampler = asyncio.create_task(_sample_rss(pid, phase, started, stop))
    async with _session(concurrency) as session:
        await asyncio.gather(
            *(_ask(session, url, image, digest, phase, latencies) for _ in range(concurrency))
        )
    phase.seconds = time.monotonic() - started
    stop.set()
    await sampler
    phase.summarize(latencies, counter)
    return phase


async def steady_load(
    url: str,
    images: dict[str, str],
    concurrency: int,
    duration_seconds: float,
    pid: int | None,
) -> Phase:
    """``concurrency`` checks always in flight, round-robin over ``images``, for a while."""
    phase = Phase("steady load", concurrency=concurrency)
    names = list(images)
    latencies: list[float] = []
    stop = asyncio.Event()
    started, counter = time.monotonic(), time.perf_counter()
    stop_at = started + duration_seconds
    sampler = asyncio.create_task(_sample_rss(pid, phase, started, stop))

    async def worker(position: int, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            image = names[position % len(names)]
            position += concurrency
            await _ask(session, url, image, images[image], phase, latencies)

    async with _session(concurrency) as session:
        await asyncio.gather(*(worker(index, session) for index in range(concurrency)))
    phase.seconds = time.monotonic() - started
    stop.set()
    await sampler
    phase.summarize(latencies, counter)
    return phase


# --- reporting ----------------------------------------------------------------------------------


@dataclass
class Report:
    storm: Phase | None
    load: Phase
    ttl_seconds: float
    images: int
    counts: RegistryCounts | None = None
    """Registry counts; None when the registry is not ours to read (``--url``)."""
    storm_image: str | None = None
    max_rss_mib: float = 0.0
    failures: list[str] = field(default_factory=list)

    def check(self, max_rss_mib: float) -> None:
        for phase in (self.storm, self.load):
            if phase is not None and (phase.errors or phase.wrong_verdicts):
                self.failures.append(
                    f"{phase.name}: {phase.errors} errors, {phase.wrong_verdicts} wrong "
                    f"verdicts, e.g. {phase.problems[:2]}"
                )
        rss = [value for phase in (self.storm, self.load) if phase for _, value in phase.rss_kib]
        self.max_rss_mib = max(rss, default=0) / 1024
        if self.max_rss_mib > max_rss_mib:
            self.failures.append(f"service RSS reached {self.max_rss_mib:.0f} MiB")
        if self.counts is not None:
            self.failures += registry_invariants(
                self.counts, self.load, self.ttl_seconds, self.storm_image
            )

    def table(self) -> str:
        rows: list[tuple[str, str]] = []
        for phase in (self.storm, self.load):
            if phase is None:
                continue
            what = f"{self.images} images" if phase is self.load else "1 image"
            prefix = f"{phase.name} ({phase.concurrency} concurrent, {what})"
            rows += [
                (f"{prefix} checks", f"{phase.requests}"),
                (f"{prefix} errors + wrong verdicts", f"{phase.errors + phase.wrong_verdicts}"),
                (f"{prefix} p50 ms", f"{phase.p50_ms:.1f}"),
                (f"{prefix} p99 ms", f"{phase.p99_ms:.1f}"),
                (f"{prefix} checks/s", f"{phase.checks_per_second:.0f}"),
            ]
        if self.counts is not None:
            if self.storm_image is not None:
                storm_heads = len(self.counts.heads[self.storm_image])
                rows.append(("spawn storm: registry manifest HEADs", f"{storm_heads}"))
            load_heads = {i: t for i, t in self.counts.heads.items() if i != self.storm_image}
            between = [gap for times in load_heads.values() for gap in gaps(times)]
            per_image = [len(times) for times in load_heads.values()]
            rows += [
                ("steady load: registry manifest HEADs", f"{sum(per_image)}"),
                ("steady load: HEADs per image, min-max", f"{min(per_image)}-{max(per_image)}"),
                (
                    f"steady load: gap between HEADs of an image, min-max s (TTL "
                    f"{self.ttl_seconds:g})",
                    f"{min(between, default=0):.2f}-{max(between, default=0):.2f}",
                ),
                (
                    "registry index GETs (once per digest)",
                    f"{sum(self.counts.index_gets.values())}",
                ),
                ("registry platform manifest GETs", f"{self.counts.other_gets}"),
            ]
        load_rss = [value for _, value in self.load.rss_kib]
        if load_rss:
            rows += [
                ("service RSS at load start MiB", f"{load_rss[0] / 1024:.1f}"),
                ("service RSS max MiB", f"{self.max_rss_mib:.1f}"),
                ("service RSS at load end MiB", f"{load_rss[-1] / 1024:.1f}"),
            ]
        width = max(len(name) for name, _ in rows)
        lines = [
            f"imagewarden serve under load, {self.load.seconds:.0f} s, tag TTL "
            f"{self.ttl_seconds:g} s, {os.cpu_count()} cores shared by load generator, service "
            "and registry",
            f"{'measurement':<{width}}  {'value':>10}",
        ]
        lines += [f"{name:<{width}}  {value:>10}" for name, value in rows]
        lines.append("invariants: " + ("all hold" if not self.failures else "FAILED"))
        lines += [f"  - {failure}" for failure in self.failures]
        return "\n".join(lines)


# --- entry points -------------------------------------------------------------------------------


async def generate(args: argparse.Namespace, images: dict[str, str]) -> tuple[Phase | None, Phase]:
    url = args.url.rstrip("/") + "/api/v1/check"
    storm_phase = None
    if args.storm_image:
        storm_phase = await storm(
            url, args.storm_image, args.storm_digest, args.concurrency, args.service_pid
        )
    load = await steady_load(url, images, args.concurrency, args.duration, args.service_pid)
    return storm_phase, load


def self_contained(args: argparse.Namespace) -> Report:
    with tempfile.TemporaryDirectory(prefix="load-service-") as scratch:
        work = Path(scratch)
        registry = start_registry(work / "registry", mode="open")
        service: subprocess.Popen[bytes] | None = None
        try:
            seeded = seed_images(registry, work, count=args.images, repos=args.repos)
            port = free_port()
            config = write_config(work / "imagewarden.yaml", registry.url, ttl_seconds=args.ttl)
            service = start_service(config, port, work / "service.log")
            args.url = f"http://127.0.0.1:{port}"
            args.service_pid = service.pid
            args.storm_image, args.storm_digest = seeded.storm_image, seeded.storm_digest
            offset = log_offset(registry)
            storm_phase, load = asyncio.run(generate(args, seeded.images))
            every = {**seeded.images, seeded.storm_image: seeded.storm_digest}
            counts = count_requests(registry, every, offset=offset)
        finally:
            if service is not None:
                stop_service(service)
            registry.close()
    return Report(
        storm_phase, load, args.ttl, len(seeded.images), counts, storm_image=seeded.storm_image
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady load")
    parser.add_argument("--concurrency", type=int, default=1000, help="checks in flight")
    parser.add_argument("--images", type=int, default=50, help="distinct images (self-contained)")
    parser.add_argument("--repos", type=int, default=5, help="repositories they spread over")
    parser.add_argument("--ttl", type=float, default=8.0, help="tag_ttl_seconds (self-contained)")
    parser.add_argument("--max-rss-mib", type=float, default=512.0)
    parser.add_argument("--url", help="a running service; only generate load")
    parser.add_argument("--images-file", type=Path, help="JSON {image: digest} (with --url)")
    parser.add_argument("--service-pid", type=int, help="sample this process's VmRSS")
    parser.add_argument("--storm-image", help="with --url: the image for the spawn storm")
    parser.add_argument("--storm-digest", help="its digest")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    _raise_file_limit()
    if args.url:
        if args.images_file is None:
            parser.error("--url needs --images-file")
        images = json.loads(args.images_file.read_text())
        storm_phase, load = asyncio.run(generate(args, images))
        report = Report(storm_phase, load, args.ttl, len(images))
    else:
        report = self_contained(args)
    report.check(args.max_rss_mib)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(report.table())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
