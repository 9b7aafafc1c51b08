"""Render and reconcile pre-pull DaemonSets (50 images x 3 pools), next to Helm doing the same.

    python3 bench/bench_prepull.py [--images N] [--pools P] [--repeat R]

Two tables:

* **render**: ``render_all`` in-process, ``imagewarden prepull render`` as a command (Python
  start-up included), and ``helm template`` of a small chart shaped like z2jh's image-puller
  (one DaemonSet per pool, one init container per image) with the same pools and images;
* **reconcile** against a real API server (etcd + kube-apiserver + controllers from
  ``tests.support.kube``, loopback only; no nodes, so no pods run): create the P DaemonSets,
  reconcile again with nothing changed, and patch all of them after every digest moved, by
  ``Controller.reconcile_once`` next to ``helm install`` / ``helm upgrade`` of that chart.

Times are medians of R runs in milliseconds; "x helm" is Helm's time divided by ours (above 1
means imagewarden is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from imagewarden.metrics import Metrics
from imagewarden.prepull.controller import Controller, ControllerSettings
from imagewarden.prepull.pools import PrepullConfig, parse_prepull
from imagewarden.prepull.render import ResolvedImage, render_all
from tests.support.helm import HELM_BINARY
from tests.support.kube import KubeCluster

HELM_TEMPLATE = """\
{{- range $name, $pool := .Values.pools }}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: helm-prepull-{{ $name }}
  labels: {app: helm-prepull, pool: {{ $name | quote }}}
spec:
  selector:
    matchLabels: {app: helm-prepull, pool: {{ $name | quote }}}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 100%
  template:
    metadata:
      labels: {app: helm-prepull, pool: {{ $name | quote }}}
    spec:
      nodeSelector: {{ toJson $pool.nodeSelector }}
      {{- with $pool.tolerations }}
      tolerations: {{ toJson . }}
      {{- end }}
      terminationGracePeriodSeconds: 0
      automountServiceAccountToken: false
      initContainers:
        {{- range $index, $image := $pool.images }}
        - name: image-pull-{{ $index }}
          image: {{ $image | quote }}
          command: ["/bin/sh", "-c", "echo Pulling complete"]
        {{- end }}
      containers:
        - name: pause
          image: registry.k8s.io/pause:3.9
{{- end }}
"""


def make_config(images: int, pools: int) -> dict[str, Any]:
    section: dict[str, Any] = {"pools": {}}
    for pool in range(pools):
        section["pools"][f"pool{pool}"] = {
            "nodeSelector": {"imagewarden.bench/pool": f"p{pool}"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}] if pool == 2 else [],
            "images": [
                f"quay.io/bench/pool{pool}-image{i:03d}:2024.{i % 12 + 1}" for i in range(images)
            ],
        }
    return section


def resolutions(config: PrepullConfig, generation: int) -> dict[str, ResolvedImage]:
    resolved = {}
    for pool in config.pools.values():
        for index, image in enumerate(pool.images):
            digest = "sha256:" + hashlib.sha256(f"{image}/{generation}".encode()).hexdigest()
            resolved[image] = ResolvedImage(digest, 1_000_000 * (index + 1))
    return resolved


def helm_values(config: PrepullConfig, resolved: dict[str, ResolvedImage]) -> dict[str, Any]:
    pools = {}
    for name, pool in config.pools.items():
        pools[name] = {
            "nodeSelector": dict(pool.node_selector),
            "tolerations": [dict(t) for t in pool.tolerations],
            "images": [
                f"{image.split(':')[0]}@{resolved[image].digest}" if image in resolved else image
                for image in pool.images
            ],
        }
    return {"pools": pools}


def median_ms(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=300)


def print_table(title: str, rows: list[tuple[str, float, float | None]]) -> None:
    print(f"\n{title}")
    print(f"  {'operation':<58} {'ms':>9} {'x helm':>8}")
    for label, ms, helm_ms in rows:
        ratio = f"{helm_ms / ms:8.1f}" if helm_ms is not None else " " * 8
        print(f"  {label:<58} {ms:9.1f} {ratio}")


async def reconcile_bench(
    cluster: KubeCluster, config: PrepullConfig, repeat: int, chart: Path, work: Path
) -> list[tuple[str, float, float | None]]:
    helm_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "helm-home"),
        "KUBECONFIG": str(cluster.kubeconfig_path),
    }
    ours: dict[str, list[float]] = {"create": [], "noop": [], "patch": []}
    theirs: dict[str, list[float]] = {"create": [], "noop": [], "patch": []}
    async with cluster.admin_client() as api:
        core = client.CoreV1Api(api)
        for attempt in range(repeat):
            namespace = f"bench-{attempt}"
            helm_namespace = f"bench-helm-{attempt}"
            for name in (namespace, helm_namespace):
                await core.create_namespace({"metadata": {"name": name}})
            controller = Controller(
                config,
                api,
                ControllerSettings(namespace=namespace, identity="bench"),
                metrics=Metrics(CollectorRegistry()),
            )
            for step, generation in (("create", 1), ("noop", 1), ("patch", 2)):
                controller.resolved = {
                    (image, config.platform): value
                    for image, value in resolutions(config, generation).items()
                }
                started = time.perf_counter()
                result = await controller.reconcile_once()
                ours[step].append((time.perf_counter() - started) * 1000)
                assert not result.errors, result.errors
                values = work / f"values-{attempt}-{step}.yaml"
                values.write_text(
                    yaml.safe_dump(helm_values(config, resolutions(config, generation)))
                )
                verb = "install" if step == "create" else "upgrade"
                started = time.perf_counter()
                await asyncio.to_thread(
                    run,
                    [
                        str(HELM_BINARY),
                        verb,
                        "prepull",
                        str(chart),
                        "-n",
                        helm_namespace,
                        "-f",
                        str(values),
                    ],
                    helm_env,
                )
                theirs[step].append((time.perf_counter() - started) * 1000)
    median = statistics.median
    return [
        (
            f"create {len(config.pools)} DaemonSets  (reconcile_once | helm install)",
            median(ours["create"]),
            median(theirs["create"]),
        ),
        (
            "nothing changed      (reconcile_once | helm upgrade)",
            median(ours["noop"]),
            median(theirs["noop"]),
        ),
        (
            f"every digest moved, patch {len(config.pools)} (reconcile_once | helm upgrade)",
            median(ours["patch"]),
            median(theirs["patch"]),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50, help="images per pool")
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not os.access(HELM_BINARY, os.X_OK):
        print(
            f"Helm is missing at {HELM_BINARY}: run bash scripts/install-helm.sh", file=sys.stderr
        )
        return 2

    raw = make_config(args.images, args.pools)
    config = parse_prepull(raw)
    resolved = resolutions(config, 1)
    with tempfile.TemporaryDirectory(prefix="bench-prepull-") as temp:
        work = Path(temp)
        chart = work / "chart"
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: helm-prepull\nversion: 0.1.0\n")
        (chart / "templates" / "daemonsets.yaml").write_text(HELM_TEMPLATE)
        values = work / "values.yaml"
        values.write_text(yaml.safe_dump(helm_values(config, resolved)))
        config_file = work / "imagewarden.yaml"
        config_file.write_text(yaml.safe_dump({"prepull": raw}))
        helm_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work / "helm-home")}

        rendered = render_all(config, resolved)
        documents = len(rendered)
        init_containers = sum(
            len(d["spec"]["template"]["spec"]["initContainers"]) for d in rendered
        )
        helm_ms = median_ms(
            lambda: run(
                [str(HELM_BINARY), "template", "x", str(chart), "-f", str(values)], helm_env
            ),
            args.repeat,
        )
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"{args.pools} pools x {args.images} images: {documents} DaemonSets, "
            f"{init_containers} init containers; median of {args.repeat} runs; "
            f"{os.cpu_count()} CPUs, load average {load}"
        )
        print_table(
            "render",
            [
                (
                    "parse_prepull (config section -> pools)",
                    median_ms(lambda: parse_prepull(raw), args.repeat),
                    None,
                ),
                (
                    "render_all in-process (pinned digests, spec hash)",
                    median_ms(lambda: render_all(config, resolved), args.repeat),
                    helm_ms,
                ),
                (
                    "imagewarden prepull render (command, Python start-up)",
                    median_ms(
                        lambda: run(
                            [
                                sys.executable,
                                "-m",
                                "imagewarden.cli",
                                "prepull",
                                "render",
                                "--config",
                                str(config_file),
                            ]
                        ),
                        args.repeat,
                    ),
                    helm_ms,
                ),
                ("helm template (z2jh-style image-puller chart)", helm_ms, helm_ms),
            ],
        )
        json.dumps(rendered)  # the documents are plain JSON, as the API client sends them

        cluster = KubeCluster(work / "kube")
        started = time.monotonic()
        cluster.start()
        print(f"\n(API server ready in {time.monotonic() - started:.1f} s)")
        try:
            rows = asyncio.run(reconcile_bench(cluster, config, args.repeat, chart, work))
        finally:
            cluster.stop()
        print_table("reconcile against kube-apiserver 1.20 (loopback)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
