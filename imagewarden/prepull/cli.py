"""``imagewarden prepull {render,run,status}``: the pre-pull commands.

- ``render`` prints the DaemonSets (multi-document YAML) that ``run`` would apply; with
  ``--resolve`` it pins digests from the registries first, with ``--explain`` it precedes
  them with a comment table of which profile put which image into which pool;
- ``run`` is the controller (:mod:`imagewarden.prepull.controller`) with its HTTP app;
- ``status`` asks a running controller's ``/status`` and prints a table per pool with a
  progress bar per image.

:func:`add_parser` is what :mod:`imagewarden.cli` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from imagewarden.config import Settings, load_config
from imagewarden.errors import ConfigError, ImagewardenError
from imagewarden.prepull.render import ResolvedImage, explain_lines, render_all, to_yaml

__all__ = ["add_parser", "format_status"]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8081
"""Port of the controller's HTTP app (the checker service uses 8080)."""
DEFAULT_URL: Final = f"http://127.0.0.1:{DEFAULT_PORT}"
IN_CLUSTER_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
BAR_WIDTH: Final = 20
MAX_STATUS_BYTES: Final = 16 * 1024 * 1024


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file whose prepull: section lists the pools; without it there are none",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``prepull`` and its sub-commands to the ``imagewarden`` parser."""
    prepull = subparsers.add_parser(
        "prepull",
        help="pre-pull configured images onto node pools (DaemonSets)",
        description="Pre-pull configured images onto the nodes of each pool: render the "
        "DaemonSets, run the controller that applies them, or show which node has what.",
    )
    commands = prepull.add_subparsers(metavar="SUBCOMMAND", required=True)

    render = commands.add_parser(
        "render",
        help="print the DaemonSets, one per pool (multi-document YAML)",
        description="Print one DaemonSet per pool. Images are pulled by tag unless --resolve "
        "asks the registries for their digests.",
    )
    _add_config(render)
    render.add_argument(
        "--explain",
        action="store_true",
        help="start with a comment table: which profile put which image into which pool",
    )
    render.add_argument("--namespace", help="metadata.namespace (default: prepull.namespace)")
    render.add_argument(
        "--resolve",
        action="store_true",
        help="pin every image to the digest its registry reports now (network access)",
    )
    render.set_defaults(handler=_render)

    run = commands.add_parser(
        "run",
        help="run the controller: reconcile DaemonSets, follow coverage, serve /status",
        description="Reconcile one DaemonSet per pool, re-resolve tags, follow Nodes and "
        "Events, and serve /healthz, /readyz, /metrics and /status.",
    )
    _add_config(run)
    run.add_argument(
        "--kubeconfig", help="kubeconfig file (default: the in-cluster service account)"
    )
    run.add_argument(
        "--namespace",
        help="namespace of the DaemonSets and Lease "
        "(default: prepull.namespace, else the pod's own namespace)",
    )
    run.add_argument("--host", default="0.0.0.0", help="address of the HTTP app")  # noqa: S104
    run.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the HTTP app")
    run.add_argument("--identity", help="Lease holder identity (default: hostname + random)")
    run.add_argument(
        "--no-resolve",
        action="store_true",
        help="do not contact registries: pull by tag (tags that move are not followed)",
    )
    run.add_argument(
        "--config-poll-seconds",
        type=float,
        default=10.0,
        help="how often to look for a changed config file (a mounted ConfigMap); 0: never",
    )
    run.set_defaults(handler=_run)

    status = commands.add_parser(
        "status",
        help="show per pool which nodes hold which image (from a running controller)",
        description="Ask a running controller's /status and print a table per pool.",
    )
    status.add_argument(
        "--url", default=DEFAULT_URL, help=f"controller URL (default {DEFAULT_URL})"
    )
    status.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text: a table per pool with a bar per image (default); json: the /status document",
    )
    status.add_argument(
        "--timeout-seconds",
        type=float,
        default=10.0,
        help="how long to wait for the controller's answer (default 10)",
    )
    status.set_defaults(handler=_status)


# --- render -----------------------------------------------------------------------------------


async def _resolve_all(settings: Settings) -> dict[str, ResolvedImage]:
    from imagewarden.reference import parse
    from imagewarden.registry import RegistryClient

    config = settings.prepull
    images = {image for pool in config.pools.values() for image in pool.images}
    resolved: dict[str, ResolvedImage] = {}
    async with RegistryClient(settings) as registry:
        for image in sorted(images):
            platforms = {
                pool.platform or config.platform
                for pool in config.pools.values()
                if image in pool.images
            }
            resolution = await registry.resolve(parse(image), platform=sorted(platforms)[0])
            resolved[image] = ResolvedImage(resolution.digest, resolution.size_bytes)
    return resolved


def _render(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    resolved: dict[str, ResolvedImage] = {}
    if args.resolve:
        try:
            resolved = asyncio.run(_resolve_all(settings))
        except ImagewardenError as error:
            print(f"imagewarden: cannot resolve: {error}", file=sys.stderr)
            return 1
    documents = render_all(settings.prepull, resolved, namespace=args.namespace)
    comments = explain_lines(settings.prepull.explanation) if args.explain else []
    sys.stdout.write(to_yaml(documents, comments=comments))
    return 0


# --- run --------------------------------------------------------------------------------------


def _namespace(args: argparse.Namespace, settings: Settings) -> str:
    if args.namespace:
        return str(args.namespace)
    if settings.prepull.namespace:
        return settings.prepull.namespace
    with contextlib.suppress(OSError):
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or "default"
    return "default"


async def _api_client(kubeconfig: str | None) -> Any:
    from kubernetes_asyncio import config as kube_config
    from kubernetes_asyncio.client import ApiClient, Configuration

    if kubeconfig:
        return await kube_config.new_client_from_config(config_file=kubeconfig)
    configuration = Configuration()
    load_incluster: Any = kube_config.load_incluster_config  # untyped in kubernetes_asyncio
    load_incluster(client_configuration=configuration)
    return ApiClient(configuration=configuration)


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


async def _follow_config(controller: Any, path: str | None, interval_seconds: float) -> None:
    """Reload the config when its file changes (a ConfigMap volume updates in place)."""
    if path is None or interval_seconds <= 0:
        return
    seen = _file_digest(path)
    while True:
        await asyncio.sleep(interval_seconds)
        current = _file_digest(path)
        if current is None or current == seen:
            continue
        seen = current
        try:
            controller.set_config(load_config(path).prepull)
            log.info("config %s changed; reconciling", path)
        except ConfigError as error:
            log.error("config %s changed but is not usable, keeping the old one: %s", path, error)


async def _run_controller(args: argparse.Namespace, settings: Settings) -> None:
    from aiohttp import web

    from imagewarden.metrics import Metrics
    from imagewarden.prepull.controller import Controller, ControllerSettings, make_status_app
    from imagewarden.registry import RegistryClient

    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    metrics = Metrics()
    api = await _api_client(args.kubeconfig)
    controller_settings = ControllerSettings(namespace=_namespace(args, settings))
    if args.identity:
        controller_settings = ControllerSettings(
            namespace=controller_settings.namespace, identity=args.identity
        )
    try:
        async with RegistryClient(settings, metrics=metrics) as registry:
            controller = Controller(
                settings.prepull,
                api,
                controller_settings,
                resolver=None if args.no_resolve else registry,
                metrics=metrics,
            )
            runner = web.AppRunner(make_status_app(controller), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, args.host, args.port)
            await site.start()
            for address in runner.addresses:
                print(f"imagewarden prepull: serving on {address}", file=sys.stderr, flush=True)
            tasks = [
                asyncio.create_task(controller.run(), name="controller"),
                asyncio.create_task(
                    _follow_config(controller, args.config, args.config_poll_seconds),
                    name="follow-config",
                ),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # a crash of either ends the command with its error
            finally:
                # Stop the controller completely (it hands its Lease back) before the API
                # client and the HTTP app go away.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await runner.cleanup()
    finally:
        await api.close()


def _run(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    logging.getLogger("imagewarden").setLevel(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_run_controller(args, settings))
    return 0


# --- status -----------------------------------------------------------------------------------


def _clean(text: object) -> str:
    """One printable line (kubelet messages are quoted into the table as they came)."""
    value = "-" if text is None else str(text)
    return value if value.isprintable() else json.dumps(value)[1:-1]


def _bar(done: int, total: int) -> str:
    filled = round(BAR_WIDTH * done / total) if total else 0
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def _seconds(value: object) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "-"


def _size(value: object) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def format_status(document: dict[str, Any]) -> str:
    """The text ``prepull status`` prints: one table per pool, a progress bar per image."""
    lines: list[str] = []
    role = "leader" if document.get("leader") else "follower"
    lines.append(f"controller {_clean(document.get('identity'))} ({role})")
    pools = document.get("pools") or {}
    if not pools:
        lines.append("no pools configured")
    for pool_name, pool in pools.items():
        lines.append("")
        total = int(pool.get("nodes_total") or 0)
        warm = int(pool.get("nodes_warm") or 0)
        deployed = "" if pool.get("deployed") else "  (DaemonSet not created yet)"
        lines.append(
            f"pool {_clean(pool_name)}: {warm}/{total} nodes warm{deployed}"
            f"  [{_clean(pool.get('daemonset'))}]"
        )
        rows = [("IMAGE", "NODES", "PROGRESS", "SIZE", "LAST PULL", "LAST ERROR")]
        for image in pool.get("images") or []:
            done = int(image.get("nodes_warm") or 0)
            count = int(image.get("nodes_total") or 0)
            last_pull = _seconds(image.get("last_pull_duration_seconds"))
            if image.get("last_pull_node"):
                last_pull += f" ({_clean(image['last_pull_node'])})"
            error = image.get("last_error") or image.get("resolve_error")
            rows.append(
                (
                    _clean(image.get("image")),
                    f"{done}/{count}",
                    _bar(done, count),
                    _size(image.get("size_bytes")),
                    last_pull,
                    _clean(error)[:120],
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append(
                "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            )
    return "\n".join(lines) + "\n"


def _fetch_status(url: str, timeout_seconds: float) -> dict[str, Any]:
    target = url.rstrip("/") + "/status"
    if not target.startswith(("http://", "https://")):
        raise ValueError(f"--url must start with http:// or https://, got {url!r}")
    with urllib.request.urlopen(target, timeout=timeout_seconds) as response:  # noqa: S310
        body = response.read(MAX_STATUS_BYTES + 1)
    if len(body) > MAX_STATUS_BYTES:
        raise ValueError(f"{target} answered more than {MAX_STATUS_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{target} did not answer a JSON object")
    return document


def _status(args: argparse.Namespace) -> int:
    try:
        document = _fetch_status(args.url, args.timeout_seconds)
    except (OSError, ValueError, urllib.error.URLError) as error:
        print(f"imagewarden: cannot read the controller's status: {error}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(document, indent=2))
    else:
        sys.stdout.write(format_status(document))
    return 0
