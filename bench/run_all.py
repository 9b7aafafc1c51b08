"""Run every benchmark under bench/, one after another, and print one combined table.

    python3 bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...] [--log-dir DIR]

Runs ``bench/bench_*.py`` and ``bench/load_service.py`` as subprocesses, sequentially (the
machine has two cores; two benchmarks at once would measure each other). Each script prints its
own fixed-width table; this runner reads those tables back (a row is a label followed by
right-aligned numbers, the header above it names the columns) and prints every row of every
script in one table, with the script's name, so one run gives one set of numbers that can be
compared: latency percentiles, ratios to the peer tool (skopeo, helm, podman/ctr) and counts.

``--quick`` passes smaller sizes to the scripts it knows (a smoke run in a few minutes); without
it every script runs with its own defaults (the load run lasts 60 s). Full output of each script
goes to ``--log-dir`` (a new temporary directory by default). A script that fails shows up as a
``FAILED`` row and makes the exit status 1; the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

QUICK_ARGS: dict[str, list[str]] = {
    "bench_checker": ["--rounds", "5"],
    "bench_service": ["--rounds", "10", "--requests", "3000"],
    "bench_prepull": ["--repeat", "2"],
    "bench_agent": ["--images", "3"],
    "load_service": ["--duration", "10", "--ttl", "4"],
}
"""Smaller sizes per script for ``--quick``; scripts not listed run with their defaults."""

FULL_ARGS: dict[str, list[str]] = {
    "load_service": ["--duration", "60", "--ttl", "8", "--concurrency", "1000", "--images", "50"],
}

_VALUE = re.compile(
    r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?(?:x|%|ms|s)?$"  # 12, 0.5, 1e3, 3.2x, 40%
    r"|^\d+(?:\.\d+)?-\d+(?:\.\d+)?$"  # ranges such as 2-3 or 4.25-5.20
    r"|^(?:-|n/a)$",
    re.IGNORECASE,
)
_COLUMN = re.compile(r"\S+(?: \S+)*")
"""A header column: words separated by single spaces (columns are two or more spaces apart)."""


@dataclass
class Row:
    """One measurement line of one script's table."""

    script: str
    title: str
    label: str
    values: list[tuple[str, str]]
    """(column name, value as printed)."""


@dataclass
class Outcome:
    script: str
    seconds: float
    returncode: int
    log: Path
    rows: list[Row] = field(default_factory=list)


def scripts(only: list[str], skip: list[str]) -> list[Path]:
    found = [*sorted(BENCH_DIR.glob("bench_*.py")), BENCH_DIR / "load_service.py"]
    chosen = [path for path in found if path.exists()]
    if only:
        chosen = [path for path in chosen if path.stem in only]
    return [path for path in chosen if path.stem not in skip]


def _header_columns(line: str) -> list[tuple[str, int]]:
    """(name, end position) of each column of a header line."""
    return [(match.group(), match.end()) for match in _COLUMN.finditer(line)]


def parse_tables(script: str, text: str) -> list[Row]:
    """Rows of every fixed-width table in ``text``: label, then right-aligned values."""
    rows: list[Row] = []
    title = ""
    header: list[tuple[str, int]] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            header = []
            continue
        if set(line.strip()) <= set("-=+| "):
            continue
        if line.startswith("invariants:"):
            rows.append(Row(script, title, "invariants", [("", line.split(":", 1)[1].strip())]))
            continue
        tokens = list(re.finditer(r"\S+", line))
        values: list[re.Match[str]] = []
        while tokens and _VALUE.match(tokens[-1].group()) and len(tokens) > 1:
            values.insert(0, tokens.pop())
        if values and tokens and header:
            label = re.sub(r"\s{2,}", " / ", line[: values[0].start()].strip())
            named = []
            for token in values:
                name = ""
                if header:
                    name = min(header, key=lambda column: abs(column[1] - token.end()))[0]
                named.append((name, token.group()))
            rows.append(Row(script, title, label, named))
            continue
        columns = _header_columns(line)
        if len(columns) >= 2:  # a label column and at least one value column
            header = columns
        else:
            title, header = line.strip(), []
    return rows


def run_script(path: Path, extra: list[str], log_dir: Path, timeout_seconds: float) -> Outcome:
    log = log_dir / f"{path.stem}.log"
    command = [sys.executable, str(path), *extra]
    print(f"running {' '.join([path.name, *extra])} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with log.open("w") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        try:
            completed = subprocess.run(
                command,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stream,
                text=True,
                timeout=timeout_seconds,
                check=False,
            )
            stdout, returncode = completed.stdout, completed.returncode
        except subprocess.TimeoutExpired as expired:
            partial = expired.stdout or ""
            stdout = partial.decode() if isinstance(partial, bytes) else partial
            returncode = -1
        stream.write("\n--- stdout ---\n" + stdout)
    seconds = time.monotonic() - started
    outcome = Outcome(path.stem, seconds, returncode, log, parse_tables(path.stem, stdout))
    state = "ok" if returncode == 0 else f"FAILED ({returncode})"
    print(f"  {state} in {seconds:.0f} s, log {log}", file=sys.stderr, flush=True)
    return outcome


def _describe_values(values: list[tuple[str, str]]) -> str:
    return ", ".join(
        f"{name}={value}" if name and name.lower() != "value" else value for name, value in values
    )


def combined_table(outcomes: list[Outcome]) -> str:
    lines: list[tuple[str, str, str]] = []
    for outcome in outcomes:
        titles = {row.title for row in outcome.rows}
        if outcome.returncode != 0:
            reason = "timed out" if outcome.returncode == -1 else f"exit {outcome.returncode}"
            lines.append((outcome.script, "FAILED", f"{reason}; see {outcome.log}"))
        for row in outcome.rows:
            label = row.label
            if len(titles) > 1 and row.title:
                label = f"[{row.title[:24]}] {label}"
            lines.append((outcome.script, label, _describe_values(row.values)))
        lines.append((outcome.script, "(wall time of the script, s)", f"{outcome.seconds:.0f}"))
    script_width = max(len("benchmark"), *(len(a) for a, _, _ in lines))
    label_width = min(80, max(len("measurement"), *(len(b) for _, b, _ in lines)))
    out = [f"{'benchmark':<{script_width}}  {'measurement':<{label_width}}  values"]
    out.append("-" * (script_width + label_width + 40))
    previous = ""
    for script, label, values in lines:
        if previous and script != previous:
            out.append("")
        previous = script
        if len(label) > label_width:
            label = label[: label_width - 1] + "…"
        out.append(f"{script:<{script_width}}  {label:<{label_width}}  {values}")
    return "\n".join(out)


def _git_commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return completed.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--only", nargs="*", default=[], help="script names (without .py)")
    parser.add_argument("--skip", nargs="*", default=[], help="script names (without .py)")
    parser.add_argument("--log-dir", type=Path, help="where each script's output goes")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    args = parser.parse_args()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="imagewarden-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    chosen = scripts(args.only, args.skip)
    if not chosen:
        parser.error("no benchmark scripts selected")
    load_before = os.getloadavg()[0]
    started = dt.datetime.now(dt.UTC)
    outcomes = [
        run_script(
            path,
            (QUICK_ARGS if args.quick else FULL_ARGS).get(path.stem, []),
            log_dir,
            args.timeout,
        )
        for path in chosen
    ]
    cores = os.cpu_count() or 1
    print(
        f"imagewarden benchmarks, commit {_git_commit()}, {started:%Y-%m-%d %H:%M} UTC, "
        f"{'quick' if args.quick else 'full'} run; {cores} cores, Python "
        f"{platform.python_version()}; load average {load_before:.1f} at start"
    )
    if load_before > cores:
        print(
            f"warning: the machine was busy (load {load_before:.1f} on {cores} cores); "
            "numbers include that contention"
        )
    print(f"logs: {log_dir}\n")
    print(combined_table(outcomes))
    return 1 if any(outcome.returncode != 0 for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
