"""Tables for the ``imagewarden`` command: ``check --offline`` (DESIGN.md contract 3) and help.

Most rows call :func:`imagewarden.cli.main` in-process; one runs the installed console script
the way the README does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagewarden.cli import build_parser, main
from imagewarden.errors import InvalidReference
from imagewarden.reference import parse

DIGEST = "sha256:" + "0123456789abcdef" * 4
CONTRACT_KEYS: dict[str, type | tuple[type, ...]] = {
    "allowed": bool,
    "image": str,
    "reference": (str, type(None)),
    "pinned": (str, type(None)),
    "digest": (str, type(None)),
    "reason": str,
    "platforms": list,
    "size_bytes": (int, type(None)),
}

CONFIG = """\
policy:
  allow: ["quay.io/pangeo/*", "docker.io/library/*"]
  deny: ["quay.io/pangeo/*:latest", "docker.io/library/ubuntu"]
profiles:
  gpu:
    platform: linux/amd64
    policy: {allow: ["quay.io/nvidia/*"]}
  narrow:
    policy: {allow: ["quay.io/pangeo/pangeo-notebook:2023.*"], mode: replace}
"""


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], config: str | None
) -> Run:
    if config is not None:
        path = tmp_path / "imagewarden.yaml"
        path.write_text(config, encoding="utf-8")
        argv = [*argv, "--config", str(path)]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: --help, usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def assert_sentence(message: str, image: str) -> None:
    """A complete sentence: starts with a capital, the image or its quoted form; ends with a
    full stop or a question mark."""
    assert message == message.strip(), message
    starts = (
        message[:1].isupper()
        or message.startswith(("'", '"'))
        or re.match(r"[a-z0-9.:\[\]-]+/", message) is not None
        or message.startswith(image.strip()[:20])
    )
    assert starts, f"does not start a sentence: {message!r}"
    assert message.endswith((".", "?")), f"does not end a sentence: {message!r}"


def grammar_message(image: str) -> str:
    with pytest.raises(InvalidReference) as caught:
        parse(image.strip())
    return str(caught.value)


# --- check --offline: verdicts ---------------------------------------------------------------

VERDICTS = [
    # image as typed; extra arguments; config (None: built-in defaults); exit code;
    # expected JSON values (a subset); fragments the reason must contain
    pytest.param("quay.io/pangeo/pangeo-notebook:2023.09.11", [], None, 0,
                 {"reference": "quay.io/pangeo/pangeo-notebook:2023.09.11", "pinned": None,
                  "digest": None}, ["quay.io/**"], id="readme-example"),
    pytest.param("ubuntu", [], None, 0, {"reference": "docker.io/library/ubuntu"},
                 ["ubuntu", "docker.io/**"], id="hub-short-name"),
    pytest.param(f"ubuntu:22.04@{DIGEST}", [], None, 0,
                 {"reference": f"docker.io/library/ubuntu:22.04@{DIGEST}", "digest": DIGEST,
                  "pinned": f"docker.io/library/ubuntu@{DIGEST}"}, [], id="pinned-by-digest"),
    pytest.param("  quay.io/pangeo/x:1\t", [], None, 0,
                 {"image": "  quay.io/pangeo/x:1\t", "reference": "quay.io/pangeo/x:1"}, [],
                 id="surrounding-whitespace-stripped-image-kept"),
    pytest.param("ghcr.io/owner/x:1", [], None, 1,
                 {"reference": "ghcr.io/owner/x:1", "pinned": None, "digest": None},
                 ["ghcr.io/owner/x:1", "allowed: docker.io/**, quay.io/**"], id="not-allowed"),
    pytest.param("quay.io/pangeonot/x:1", [], CONFIG, 1, {"reference": "quay.io/pangeonot/x:1"},
                 ["not in the list of allowed images", "quay.io/pangeo/*"],
                 id="no-prefix-bypass"),
    pytest.param("quay.io/pangeo/x", [], CONFIG, 1, {"reference": "quay.io/pangeo/x"},
                 ["quay.io/pangeo/*:latest"], id="implied-latest-denied"),
    pytest.param("quay.io/pangeo/x:2023.09.11", [], CONFIG, 0, {}, ["quay.io/pangeo/*"],
                 id="config-allows"),
    pytest.param("ubuntu:22.04", [], CONFIG, 1, {"reference": "docker.io/library/ubuntu:22.04"},
                 ["docker.io/library/ubuntu"], id="hub-deny"),
    pytest.param("index.docker.io/library/ubuntu:22.04", [], CONFIG, 1, {},
                 ["docker.io/library/ubuntu"], id="hub-deny-legacy-host"),
    pytest.param("Docker.IO/ubuntu:22.04", [], CONFIG, 1, {}, ["docker.io/library/ubuntu"],
                 id="hub-deny-upper-case-host"),
    pytest.param("quay.io/nvidia/cuda:12", [], CONFIG, 1, {}, [], id="gpu-image-global"),
    pytest.param("quay.io/nvidia/cuda:12", ["--profile", "gpu"], CONFIG, 0, {},
                 ["quay.io/nvidia/*"], id="gpu-image-gpu-profile"),
    pytest.param("quay.io/pangeo/x:1", ["--profile", "narrow"], CONFIG, 1, {},
                 ["narrow profile"], id="replace-profile-narrows"),
    # Strings that do not parse are refusals carrying the grammar's message.
    pytest.param("https://quay.io/pangeo/x", [], None, 1, {"reference": None}, ["https://"],
                 id="url-scheme"),
    pytest.param("docker pull ubuntu", [], None, 1, {"reference": None}, ["docker pull"],
                 id="docker-pull-prefix"),
    pytest.param("quay.io/Pangeo/x", [], None, 1, {"reference": None}, ["lower-case"],
                 id="upper-case-path"),
    pytest.param("ubuntu:", [], None, 1, {"reference": None}, ["tag"], id="empty-tag"),
    pytest.param("ubuntu@sha256:abc", [], None, 1, {"reference": None}, ["64"],
                 id="short-digest"),
    pytest.param("", [], None, 1, {"reference": None}, ["empty"], id="empty"),
    pytest.param("quay.io/pangeo/x\x00", [], None, 1, {"reference": None}, ["NUL"], id="nul"),
    pytest.param("ubuntu\r\nX-Evil: 1", [], None, 1, {"reference": None}, ["control character"],
                 id="crlf"),
    pytest.param("quay.io/pangeo/\u0445", [], None, 1, {"reference": None}, ["U+0445"],
                 id="cyrillic-lookalike"),
    pytest.param("quay.io/" + "a" * 10_000, [], None, 1, {"reference": None},
                 ["10008 characters long"], id="10kB"),
]  # fmt: skip


@pytest.mark.parametrize(("image", "extra", "config", "code", "values", "fragments"), VERDICTS)
def test_check_offline_json(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    image: str,
    extra: list[str],
    config: str | None,
    code: int,
    values: dict[str, Any],
    fragments: list[str],
) -> None:
    result = run(
        capsys, tmp_path, ["check", "--offline", "--output", "json", *extra, image], config
    )
    assert result.code == code, result.err
    verdict = json.loads(result.out)
    for key, types in CONTRACT_KEYS.items():
        assert isinstance(verdict[key], types), (key, verdict[key])
    assert verdict["allowed"] is (code == 0)
    assert verdict["image"] == image
    assert verdict["platforms"] == []
    assert verdict["size_bytes"] is None
    for key, value in values.items():
        assert verdict[key] == value, key
    reason = verdict["reason"]
    assert_sentence(reason, image)
    for fragment in fragments:
        assert fragment in reason
    if verdict["reference"] is None and len(image) <= 4096:
        assert reason == grammar_message(image)


TEXT = [
    # image; exit code; first word of the output
    pytest.param("quay.io/pangeo/pangeo-notebook:2023.09.11", 0, "ALLOWED", id="allowed"),
    pytest.param(f"quay.io/pangeo/x@{DIGEST}", 0, "ALLOWED", id="allowed-pinned"),
    pytest.param("ghcr.io/x/y", 1, "REFUSED", id="refused"),
    pytest.param("https://quay.io/x", 1, "REFUSED", id="unparsable"),
]


@pytest.mark.parametrize(("image", "code", "word"), TEXT)
def test_check_offline_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: str, code: int, word: str
) -> None:
    result = run(capsys, tmp_path, ["check", "--offline", image], None)
    assert result.code == code
    first, *rest = result.out.splitlines()
    assert first.split()[0] == word
    assert_sentence(first.removeprefix(word).strip(), image)
    if "@" in image:
        assert f"pinned:    quay.io/pangeo/x@{DIGEST}" in rest


# --- check: usage and config errors exit 2 ---------------------------------------------------

USAGE_ERRORS = [
    # arguments after "check"; config text (None: no --config); fragments expected on stderr
    pytest.param(["--offline", "ubuntu"],
                 "policy:\n  allow: [quay.io/a/*, docker.io/**, 'quay.io/[']\n",
                 ["config error", "policy.allow[2]", "'quay.io/['"], id="bad-pattern"),
    pytest.param(["--offline", "ubuntu"], "polcy: {}\n", ["config error", "polcy", "unknown key"],
                 id="unknown-key"),
    pytest.param(["--offline", "ubuntu"], "checker: {failure_mode: maybe}\n",
                 ["checker.failure_mode", "'maybe'"], id="bad-enum"),
    pytest.param(["--offline", "ubuntu"], "policy: [\n", ["not valid YAML"], id="bad-yaml"),
    pytest.param(["--offline", "--config", "/nonexistent/imagewarden.yaml", "ubuntu"], None,
                 ["cannot read config file", "/nonexistent/imagewarden.yaml"], id="missing-file"),
    pytest.param(["--offline", "--profile", "nope", "ubuntu"], CONFIG,
                 ["unknown profile 'nope'", "gpu", "narrow"], id="unknown-profile"),
    pytest.param(["--offline", "--profile", "gpu", "ubuntu"], None,
                 ["unknown profile 'gpu'", "none are configured"],
                 id="profile-without-config"),
    pytest.param(["--offline"], None, ["IMAGE"], id="no-image"),
    pytest.param(["--offline", "--output", "yaml", "ubuntu"], None, ["--output", "yaml"],
                 id="bad-output"),
    pytest.param(["--offline", "--bogus", "ubuntu"], None, ["--bogus"], id="unknown-option"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "config", "fragments"), USAGE_ERRORS)
def test_check_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    config: str | None,
    fragments: list[str],
) -> None:
    result = run(capsys, tmp_path, ["check", *argv], config)
    assert result.code == 2
    assert result.out == ""
    for fragment in fragments:
        assert fragment in result.err
    assert "Traceback" not in result.err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, tmp_path, [], None)
    assert result.code == 2
    assert "COMMAND" in result.err


# --- help ------------------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every (sub)command: its words, its parser, and the one-line help its parent lists."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, summaries.get(name, "")
                yield from commands(sub, (*path, name))


COMMANDS = {" ".join(words): (sub, summary) for words, sub, summary in commands(build_parser())}

PURPOSE = {
    # command; words its --help must contain to say what it is for
    "check": ["allowlist", "registry", "Exit 0 allowed, 1 refused, 2", "--offline"],
    "serve": ["/api/v1/check", "--host", "--port"],
    "prepull": ["Pre-pull", "render", "run", "status"],
    "prepull render": ["DaemonSet", "pool"],
    "prepull run": ["DaemonSet", "pool"],
    "prepull status": ["/status", "pool"],
    "agent": ["pull", "pool"],
}


def test_expected_commands_exist() -> None:
    assert set(PURPOSE) <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    parser, summary = COMMANDS[command]
    result = run(capsys, tmp_path, [*command.split(), "--help"], None)
    assert result.code == 0
    assert result.out.startswith(f"usage: imagewarden {command}")
    assert len(summary) >= 20, f"'imagewarden --help' lists {command!r} without a summary"
    description = " ".join((parser.description or "").split())
    assert len(description) >= 40, f"{command!r} has no description"
    assert description in " ".join(result.out.split())
    for word in PURPOSE.get(command, []):
        assert word in result.out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command: str) -> None:
    parser, _ = COMMANDS[command]
    missing = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


def test_top_level_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run(capsys, tmp_path, ["--help"], None)
    assert result.code == 0
    for word in ["spawn form", "pre-pull", "imagewarden check", *sorted(PURPOSE)]:
        assert word.split()[0] in result.out


def test_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from imagewarden import __version__

    result = run(capsys, tmp_path, ["--version"], None)
    assert result.code == 0
    assert result.out.strip() == f"imagewarden {__version__}"


# --- the installed console script, as the README runs it --------------------------------------


def console_script() -> str:
    beside_python = Path(sys.executable).with_name("imagewarden")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("imagewarden")
    assert found, "the imagewarden console script is not installed (pip install -e .)"
    return found


def test_readme_command_through_console_script(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMAGEWARDEN")}
    completed = subprocess.run(
        [console_script(), "check", "--offline", "quay.io/pangeo/pangeo-notebook:2023.09.11"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(
        "ALLOWED  quay.io/pangeo/pangeo-notebook:2023.09.11 is allowed by quay.io/**"
    )
    assert completed.stderr == ""
