#!/usr/bin/env python3
"""Check that the chart's values files and values.schema.yaml declare the same keys.

Two directions, both errors (exit 1):

- a key in a values file that the schema does not declare: Helm would reject it at install
  time, but this says so without Helm and names every such key at once;
- a key the schema declares that neither values.yaml nor any ci/*.yaml example sets: a
  setting nobody documents by example and no test renders.

Open mappings stop the walk: maps from user-chosen names (``additionalProperties: {schema}``,
``patternProperties``) and Kubernetes objects passed through as written (``type: object``
without ``properties``). ``$ref`` is followed into ``definitions``.

    python3 tools/compare-values-schema-content.py [--chart helm/imagewarden]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "imagewarden"

WILDCARD = "*"
"""Stands for any name in a map whose keys the user chooses (pools, registries, labels)."""


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema:
        reference = schema["$ref"]
        if not reference.startswith("#/"):
            raise ValueError(f"only local $ref is supported, got {reference!r}")
        target: Any = root
        for part in reference[2:].split("/"):
            target = target[part]
        schema = target
    return schema


def schema_paths(schema: dict[str, Any], root: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key path the schema declares; a user-named map contributes ``PATH.*``."""
    schema = _resolve(schema, root)
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        yield path
        sub = _resolve(sub, root)
        if sub.get("properties"):
            yield from schema_paths(sub, root, f"{path}.")
        elif _is_open_map(sub):
            yield f"{path}.{WILDCARD}"


def _is_open_map(schema: dict[str, Any]) -> bool:
    """A mapping whose keys the user chooses (labels, pools) or that passes through as written."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    return schema.get("additionalProperties", True) is not False and (
        "object" in types or "patternProperties" in schema
    )


def values_paths(values: Any, prefix: str = "") -> Iterator[str]:
    """Every key path set in a values document (nested mappings only, not list items)."""
    if not isinstance(values, dict):
        return
    for name, sub in values.items():
        path = f"{prefix}{name}"
        yield path
        yield from values_paths(sub, f"{path}.")


def _declared(path: str, declared: set[str]) -> bool:
    if path in declared:
        return True
    parts = path.split(".")
    # Under a user-named map anything goes as far as this tool is concerned (the schema of the
    # map's values still applies when Helm validates).
    return any(".".join([*parts[:i], WILDCARD]) in declared for i in range(1, len(parts)))


def compare(chart_dir: Path) -> list[str]:
    """Problems found, one line each; empty when the values files and the schema agree."""
    schema = yaml.safe_load((chart_dir / "values.schema.yaml").read_text(encoding="utf-8"))
    declared = set(schema_paths(schema, schema))
    files = [chart_dir / "values.yaml", *sorted((chart_dir / "ci").glob("*.yaml"))]
    problems: list[str] = []
    covered: set[str] = set()
    for file in files:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        for path in values_paths(values):
            covered.add(path)
            if not _declared(path, declared):
                problems.append(f"{file.relative_to(chart_dir)}: {path} is not in the schema")
    for path in sorted(declared):
        if path.endswith(f".{WILDCARD}"):
            continue
        if path not in covered:
            problems.append(
                f"values.schema.yaml: {path} is set in neither values.yaml nor ci/*.yaml"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART_DIR, help="chart directory")
    args = parser.parse_args(argv)
    problems = compare(args.chart)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
