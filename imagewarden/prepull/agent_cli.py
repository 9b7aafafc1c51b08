"""The node agent's front end: ``imagewarden agent`` arguments, the run loop, the terminal bars.

:mod:`imagewarden.prepull.agent` holds the agent itself (rounds, status, metrics endpoint);
this module turns command-line arguments and the config file into :class:`AgentSettings`,
opens the registry client and the engine, draws one progress bar per image with ``rich`` when
stderr is a terminal, and maps the outcome to exit codes: 0 done, 1 images missing (``--once``)
or engine unreachable, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from imagewarden.errors import ConfigError, EngineError
from imagewarden.metrics import Metrics
from imagewarden.prepull.agent import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    AgentSettings,
    ImageRecord,
    ImageState,
    NodeAgent,
)
from imagewarden.prepull.engines import DEFAULT_SOCKETS, EngineKind, open_engine

__all__ = ["ProgressDisplay", "add_parser", "run_agent", "settings_from_args"]

log = logging.getLogger("imagewarden.prepull.agent")


# -- terminal display -----------------------------------------------------------------------


class ProgressDisplay:
    """One bar per image with bytes and rate, drawn with ``rich`` while pulls run."""

    def __init__(self, console: Any = None) -> None:
        from rich import filesize
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=30),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[rate]:>12}"),
            TextColumn("{task.fields[state]}"),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._started = False
        self._filesize = filesize

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
        self._started = False

    def refresh(self, records: Sequence[ImageRecord]) -> None:
        for record in records:
            state = record.state.value
            if record.state is ImageState.FAILED and record.last_error_reason:
                state = f"failed: {record.last_error_reason}"
            total, completed = record.bytes_total, record.bytes_done
            if record.state is ImageState.PRESENT and record.last_pull_bytes is None:
                state = "already present"
                total = completed = record.size_bytes or 0
            # The agent's own rate: over the last seconds while pulling, the average after.
            rate = ""
            if record.rate_bytes_per_second > 0:
                rate = f"{self._filesize.decimal(int(record.rate_bytes_per_second))}/s"
            task_id = self._tasks.get(record.image)
            if task_id is None:
                name = record.reference.familiar
                task_id = self.progress.add_task(name, total=total, state=state, rate=rate)
                self._tasks[record.image] = task_id
            self.progress.update(task_id, total=total, completed=completed, state=state, rate=rate)
        if self._started:
            self.progress.refresh()


# -- command line ---------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``imagewarden agent`` to the command line."""
    parser = subparsers.add_parser(
        "agent",
        help="keep one pre-pull pool's images on this node, pulled through its engine",
        description="Resolve a pre-pull pool's images to digests and pull the missing ones "
        "through this node's container engine (Docker API or CRI), in parallel, with progress; "
        "re-check on an interval and pull tags that moved. With --once: one round, exit 0 when "
        "every image is present, 1 when some are not, 2 on usage or config errors.",
    )
    parser.add_argument("--pool", required=True, metavar="NAME", help="pool under prepull.pools")
    parser.add_argument("--config", metavar="FILE", help="the imagewarden YAML config file")
    parser.add_argument(
        "--engine",
        choices=[kind.value for kind in EngineKind],
        default=EngineKind.DOCKER.value,
        help="docker: Docker Engine API (dockerd, podman); cri: CRI ImageService (containerd)",
    )
    parser.add_argument(
        "--engine-socket",
        metavar="ADDRESS",
        help="engine socket (unix:///path or /path); default: "
        + ", ".join(f"{kind.value} {address}" for kind, address in DEFAULT_SOCKETS.items()),
    )
    parser.add_argument(
        "--parallel", type=_positive_int, default=2, metavar="N", help="pulls at once (2)"
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between re-checks (default: prepull.resolve_interval_seconds)",
    )
    parser.add_argument("--once", action="store_true", help="run one round and exit")
    parser.add_argument("--retries", type=int, default=3, help="retries of temporary failures")
    parser.add_argument(
        "--stall-timeout",
        type=_positive_float,
        default=120.0,
        metavar="SECONDS",
        help="cut a Docker API pull that shows no progress for this long (120)",
    )
    parser.add_argument(
        "--pull-timeout",
        type=_positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="longest one pull attempt may take (3600)",
    )
    parser.add_argument(
        "--remove-replaced",
        action="store_true",
        help="remove digests this agent pulled once their tag has moved (never anything else)",
    )
    parser.add_argument(
        "--listen-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of /metrics and /status (127.0.0.1; 0.0.0.0 for a Prometheus scrape)",
    )
    parser.add_argument(
        "--listen-port",
        type=_port,
        default=9465,
        metavar="PORT",
        help="port of /metrics and /status (9465; 0 picks a free port)",
    )
    parser.add_argument("--no-listen", action="store_true", help="serve no /metrics or /status")
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="live progress bars (auto: when stderr is a terminal)",
    )
    parser.add_argument(
        "--status-file",
        metavar="FILE",
        help="write the /status document here after every round (JSON)",
    )
    parser.set_defaults(handler=_run_command)


def settings_from_args(args: argparse.Namespace, prepull: Any) -> tuple[AgentSettings, list[str]]:
    """Agent settings and the pool's images from parsed arguments and the ``prepull`` config."""
    pools = prepull.pools
    if args.pool not in pools:
        known = ", ".join(sorted(pools)) or "none are configured"
        raise ConfigError("prepull.pools", f"no pool named {args.pool!r}; known pools: {known}")
    pool = pools[args.pool]
    if args.retries < 0:
        raise ConfigError("--retries", f"must not be negative, got {args.retries}")
    settings = AgentSettings(
        pool=args.pool,
        engine=EngineKind(args.engine),
        engine_address=args.engine_socket,
        platform=pool.platform or prepull.platform,
        max_parallel_pulls=args.parallel,
        recheck_interval_seconds=args.interval or prepull.resolve_interval_seconds,
        retries=args.retries,
        stall_timeout_seconds=args.stall_timeout,
        pull_timeout_seconds=args.pull_timeout,
        remove_replaced=args.remove_replaced,
        listen_host=args.listen_host,
        listen_port=None if args.no_listen else args.listen_port,
    )
    return settings, list(pool.images)


def _run_command(args: argparse.Namespace) -> int:
    from imagewarden.config import load_config

    try:
        config = load_config(args.config)
        settings, images = settings_from_args(args, config.prepull)
    except ConfigError as error:
        print(f"imagewarden agent: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger("imagewarden.prepull").setLevel(logging.INFO)
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    return asyncio.run(
        run_agent(
            config,
            settings,
            images,
            once=args.once,
            show_progress=show,
            status_file=Path(args.status_file) if args.status_file else None,
        )
    )


async def run_agent(
    config: Any,
    settings: AgentSettings,
    images: Sequence[str],
    *,
    once: bool = False,
    show_progress: bool = False,
    status_file: Path | None = None,
) -> int:
    """Run the agent with a real registry client and engine until a signal (or one round)."""
    from imagewarden.registry import RegistryClient

    metrics = Metrics()
    engine = open_engine(
        settings.engine,
        settings.engine_address,
        max_parallel_pulls=settings.max_parallel_pulls,
        stall_timeout_seconds=settings.stall_timeout_seconds,
        pull_timeout_seconds=settings.pull_timeout_seconds,
    )
    async with RegistryClient(config, metrics=metrics) as client:
        try:
            agent = NodeAgent(images, settings, resolver=client, engine=engine, metrics=metrics)
        except ConfigError as error:
            await engine.close()
            print(f"imagewarden agent: {error}", file=sys.stderr)
            return EXIT_USAGE
        display = ProgressDisplay() if show_progress else None
        with _logging_through(display), display or contextlib.nullcontext():
            agent.view = display
            try:
                try:
                    await agent.start_server()
                except OSError as error:
                    where = f"{settings.listen_host}:{settings.listen_port}"
                    print(f"imagewarden agent: cannot listen on {where}: {error}", file=sys.stderr)
                    return EXIT_USAGE
                return await _drive(agent, once=once, status_file=status_file)
            except EngineError as error:
                print(f"imagewarden agent: {error}", file=sys.stderr)
                return EXIT_INCOMPLETE
            finally:
                await agent.close()


async def _drive(agent: NodeAgent, *, once: bool, status_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, agent.stop)
    if once:
        report = await agent.run_once()
        _write_status(agent, status_file)
        return EXIT_OK if report is not None and report.complete else EXIT_INCOMPLETE
    await agent.run(on_round=lambda: _write_status(agent, status_file))
    return EXIT_OK


def _write_status(agent: NodeAgent, path: Path | None) -> None:
    if path is None:
        return
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(json.dumps(agent.status(), indent=2))
    scratch.replace(path)


@contextlib.contextmanager
def _logging_through(display: ProgressDisplay | None) -> Iterator[None]:
    """Send log records through the display's console so they print above the bars."""
    if display is None:
        yield
        return
    from rich.logging import RichHandler

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [RichHandler(console=display.console, show_path=False)]
    try:
        yield
    finally:
        root.handlers = saved
