#!/usr/bin/env python3
"""Write helm/imagewarden/values.schema.json from values.schema.yaml, the source.

Helm reads only the JSON file; the YAML one carries the descriptions that document every value.
The descriptions are stripped (Helm does not need them, and they would bloat the chart), the
rest is copied unchanged. ``--check`` exits 1 when the committed JSON is out of date, which is
what the test suite runs.

    python3 tools/generate-json-schema.py [--check] [--chart helm/imagewarden]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "imagewarden"

# Keys whose values are maps from user-chosen names to schemas, not schemas themselves: a
# property called "description" under them must survive the stripping.
_NAME_MAPS = ("properties", "definitions", "$defs", "patternProperties")


def strip_descriptions(schema: Any) -> Any:
    """A copy of ``schema`` without ``description`` keywords, at any depth."""
    if isinstance(schema, list):
        return [strip_descriptions(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key in _NAME_MAPS and isinstance(value, dict):
            result[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        else:
            result[key] = strip_descriptions(value)
    return result


def render(chart_dir: Path) -> str:
    """The JSON text for ``chart_dir``'s values.schema.yaml."""
    source = yaml.safe_load((chart_dir / "values.schema.yaml").read_text(encoding="utf-8"))
    return json.dumps(strip_descriptions(source), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART_DIR, help="chart directory")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if values.schema.json differs"
    )
    args = parser.parse_args(argv)
    target = args.chart / "values.schema.json"
    text = render(args.chart)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(
                f"{target} is out of date with values.schema.yaml; "
                "run: python3 tools/generate-json-schema.py",
                file=sys.stderr,
            )
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
