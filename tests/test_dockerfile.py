"""The image definition agrees with the code and the chart that rely on it.

The Dockerfile cannot be built on a machine without base images (see the README), so these
tests check what can be checked without a builder: the no-op binary lands where
``imagewarden.prepull.render`` makes pre-pull pods look for it, the Dockerfile's own compile
command builds a static binary that behaves as the pods expect, the image runs as the
non-root uid the chart declares, and ``imagewarden`` is the entry point.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from imagewarden.prepull.render import NOOP_BINARY_PATH
from tests.support.helm import CHART_DIR, REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass
class Stage:
    """One FROM … block: its name and instructions as (keyword, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, enough for the checks below."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            if keyword == "ARG" and "=" in arguments:
                key, value = arguments.split("=", 1)
                global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, arguments.strip()))
    return global_args, stages


def _stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def _stage_args(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for argument in stage.arguments("ARG"):
        key, _, value = argument.partition("=")
        values[key] = value
    return values


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def test_dockerfile_is_multi_stage_on_a_slim_python_base() -> None:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2
    assert stages[0].name == "build"
    final = stages[-1]
    base = _expand(final.base, global_args)
    assert re.fullmatch(r"docker\.io/library/python:3\.\d+-slim(-\w+)?", base), base
    assert not any("gcc" in run for run in final.arguments("RUN")), "no compiler in the image"


def test_noop_binary_lands_where_prepull_render_expects_it() -> None:
    final = _stages()[-1]
    destinations = []
    for copy in final.arguments("COPY"):
        words = shlex.split(copy)
        sources = [w for w in words if not w.startswith("--")]
        if "--from=build" in words and sources[0] == "/noop":
            destinations.append(sources[-1])
    assert destinations == [NOOP_BINARY_PATH]


def test_build_stage_compiles_the_noop_statically_from_docker_noop_c() -> None:
    build = _stages()[0]
    compile_commands = [run for run in build.arguments("RUN") if "gcc -" in run]
    assert len(compile_commands) == 1
    assert "-static" in compile_commands[0]
    assert "docker/noop.c" in compile_commands[0]
    assert "COPY docker/noop.c docker/noop.c" in [f"COPY {c}" for c in build.arguments("COPY")]


def _compile_as_the_dockerfile_does(tmp_path: Path) -> Path:
    """Run the Dockerfile's gcc command here, in a copy of docker/, writing to tmp_path."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the static no-op (Debian package gcc)")
    [run] = [run for run in _stages()[0].arguments("RUN") if "gcc -" in run]
    gcc_command = next(part for part in run.split("&&") if "gcc -" in part).strip()
    words = shlex.split(gcc_command)
    output = tmp_path / "noop"
    words[words.index("-o") + 1] = str(output)
    (tmp_path / "docker").mkdir()
    shutil.copy(REPO_ROOT / "docker" / "noop.c", tmp_path / "docker" / "noop.c")
    subprocess.run(words, cwd=tmp_path, check=True, timeout=120, capture_output=True)
    return output


def test_the_dockerfile_compile_command_builds_a_static_noop(tmp_path: Path) -> None:
    binary = _compile_as_the_dockerfile_does(tmp_path)
    with binary.open("rb") as handle:
        header = handle.read(4096)
    assert header[:4] == b"\x7fELF"
    assert b"PT_INTERP" not in header
    description = subprocess.run(
        ["file", str(binary)], capture_output=True, text=True, check=False
    ).stdout
    if description:
        assert "statically linked" in description or "static-pie" in description, description
    assert subprocess.run([str(binary)], timeout=10, check=False).returncode == 0
    assert (
        subprocess.run(
            [str(binary), "--bogus"], timeout=10, check=False, capture_output=True
        ).returncode
        == 2
    )


def test_noop_sleep_waits_for_sigterm_then_exits_zero(tmp_path: Path) -> None:
    binary = _compile_as_the_dockerfile_does(tmp_path)
    process = subprocess.Popen([str(binary), "--sleep"])
    try:
        time.sleep(0.3)
        assert process.poll() is None, "noop --sleep must keep running"
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_image_runs_as_the_non_root_uid_the_chart_declares() -> None:
    final = _stages()[-1]
    values = _stage_args(final)
    [user] = final.arguments("USER")
    uid, _, gid = _expand(user, values).partition(":")
    assert uid.isdigit(), "USER must be numeric for runAsNonRoot to verify it"
    assert int(uid) != 0
    chart = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["securityContext"]
    assert int(uid) == chart["runAsUser"]
    assert int(gid) == chart["runAsGroup"]
    last_user_index = max(i for i, (kw, _) in enumerate(final.instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in final.instructions[last_user_index:])


def test_entrypoint_is_imagewarden() -> None:
    final = _stages()[-1]
    assert final.arguments("ENTRYPOINT") == ['["imagewarden"]']
    import json

    [cmd] = final.arguments("CMD")
    assert json.loads(cmd) == ["--help"]


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for stage in _stages():
        for copy in stage.arguments("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(copy)):
                continue
            copied.update(words[:-1])
    assert copied <= admitted, f"copied but ignored: {sorted(copied - admitted)}"
    for path in copied:
        assert (REPO_ROOT / path).exists(), path
