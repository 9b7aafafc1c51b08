"""The ``imagewarden`` command: check, serve, prepull, agent.

Exit codes of ``check`` (DESIGN.md contract 3): 0 allowed, 1 refused (a string that does not
parse is a refusal too), 2 usage or config error. Every command takes ``--config FILE``; without
it the built-in defaults allow docker.io and quay.io and refuse everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from imagewarden import __version__
from imagewarden.errors import ConfigError

if TYPE_CHECKING:
    from imagewarden.checker import Verdict
    from imagewarden.config import Settings

EXIT_ALLOWED = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
imagewarden checks the container images users type into JupyterHub's spawn form (the "Other"
choice) before a pod is created, and pre-pulls the configured images onto the right node pools.

Start here:
  imagewarden check quay.io/pangeo/pangeo-notebook:2023.09.11
  imagewarden serve --config imagewarden.yaml          (the checker service for the hub)
  imagewarden prepull render --config imagewarden.yaml (the pre-pull DaemonSets)
"""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (registries, policy, profiles, checker, service, prepull); "
        "without it docker.io and quay.io are allowed and everything else is refused",
    )


def load_settings(args: argparse.Namespace) -> Settings:
    from imagewarden.config import load_config

    return load_config(args.config)


def _print_verdict(verdict: Verdict, output: str) -> None:
    if output == "json":
        print(json.dumps(verdict.as_json(), indent=2, sort_keys=False))
        return
    print(("ALLOWED  " if verdict.allowed else "REFUSED  ") + verdict.reason)
    if verdict.pinned:
        print(f"pinned:    {verdict.pinned}")
    if verdict.platforms:
        print(f"platforms: {', '.join(verdict.platforms)}")
    if verdict.size_bytes is not None:
        print(f"size:      {verdict.size_bytes} bytes (compressed, {verdict.platform})")


async def _run_check(settings: Settings, args: argparse.Namespace) -> Verdict:
    from imagewarden.checker import Checker

    if args.offline:
        return await Checker(settings).check(args.image, profile=args.profile)
    from imagewarden.registry import RegistryClient

    async with RegistryClient(settings) as client:
        return await Checker(settings, client, metrics=client.metrics).check(
            args.image, profile=args.profile
        )


def _check(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.profile is not None and args.profile not in settings.profiles:
        known = ", ".join(sorted(settings.profiles)) or "none are configured"
        print(f"imagewarden: unknown profile {args.profile!r}; known: {known}", file=sys.stderr)
        return EXIT_USAGE
    verdict = asyncio.run(_run_check(settings, args))
    _print_verdict(verdict, args.output)
    return EXIT_ALLOWED if verdict.allowed else EXIT_REFUSED


def _add_check_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check one image reference: grammar, allowlist, registry",
        description="Check IMAGE as the spawn form would: parse it, apply the allowlist, then "
        "ask the registry which digest a node would pull. Exit 0 allowed, 1 refused, 2 usage "
        "or config error.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image reference as a user would type it")
    add_config_argument(parser)
    parser.add_argument(
        "--profile", metavar="NAME", help="KubeSpawner profile slug whose policy and platform apply"
    )
    parser.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people (default), json with the keys of the service's answer",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="decide on grammar and allowlist only, without contacting any registry",
    )
    parser.set_defaults(handler=_check)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the sub-command about to run, only that one's module is imported."""
    parser = argparse.ArgumentParser(
        prog="imagewarden",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagewarden {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(metavar="COMMAND", required=True)
    _add_check_parser(subparsers)
    for add_parser in _subsystem_parsers(command):
        add_parser(subparsers)
    return parser


def _serve_parser() -> Callable[[Any], None]:
    from imagewarden import service

    return service.add_parser


def _prepull_parser() -> Callable[[Any], None]:
    from imagewarden.prepull import cli as prepull_cli

    return prepull_cli.add_parser


def _agent_parser() -> Callable[[Any], None]:
    from imagewarden.prepull import agent

    return agent.add_parser


_SUBSYSTEM_PARSERS = {"serve": _serve_parser, "prepull": _prepull_parser, "agent": _agent_parser}
"""Sub-commands that live beside their subsystem. Importing one pulls in its stack (aiohttp,
kubernetes_asyncio, grpc), so a command imports only its own; top-level help imports all."""


def _subsystem_parsers(command: str | None) -> list[Callable[[Any], None]]:
    if command == "check":
        return []
    if command in _SUBSYSTEM_PARSERS:
        return [_SUBSYSTEM_PARSERS[command]()]
    return [load() for load in _SUBSYSTEM_PARSERS.values()]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in arguments if not word.startswith("-")), None)
    args = build_parser(command).parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except ConfigError as error:
        print(f"imagewarden: config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
