"""The Grafana dashboard shipped with the chart: it queries only metrics imagewarden exports.

A renamed metric would leave a panel silently empty, so every name a query uses must be in
DESIGN.md's metric list and exported by a fresh :class:`imagewarden.metrics.Metrics`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from imagewarden.metrics import Metrics
from tests.support.helm import CHART_DIR, REPO_ROOT

DASHBOARD = CHART_DIR / "dashboards" / "imagewarden.json"
DESIGN = REPO_ROOT.parent / "shared" / "DESIGN.md"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
METRIC_NAME = re.compile(r"\bimagewarden_[a-z0-9_]+")


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _queries() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def _family(sample_name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def _design_metric_names() -> set[str]:
    """``imagewarden_`` + each name in DESIGN.md's "Metrics" section."""
    text = DESIGN.read_text() if DESIGN.exists() else ""
    section = text[text.index("## Metrics") :] if "## Metrics" in text else ""
    return {f"imagewarden_{name}" for name in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", section)}


def _exported_metric_names() -> set[str]:
    """Families a fresh Metrics() exposes, as ``# TYPE`` lines name them."""
    text = generate_latest(Metrics().registry).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))


def test_dashboard_is_grafana_json_with_unique_panel_ids() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "imagewarden"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()


def test_every_queried_metric_is_in_design_md() -> None:
    design = _design_metric_names()
    assert len(design) >= 11, f"could not read DESIGN.md's metric list from {DESIGN}"
    used = {_family(name) for query in _queries() for name in METRIC_NAME.findall(query)}
    assert used, "the dashboard queries no imagewarden metric"
    assert used <= design, f"not in DESIGN.md: {sorted(used - design)}"


def test_every_queried_metric_is_exported_by_imagewarden() -> None:
    exported = _exported_metric_names()
    used = {_family(name) for query in _queries() for name in METRIC_NAME.findall(query)}
    assert used <= exported, f"not exported by imagewarden.metrics: {sorted(used - exported)}"


def test_histogram_quantiles_use_bucket_series_grouped_by_le() -> None:
    for query in _queries():
        if "histogram_quantile" not in query:
            continue
        assert "_bucket" in query, query
        assert re.search(r"by \((le|le, \w+)\)", query), query


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        pytest.param(
            "checks per result", r"sum by \(result\).*imagewarden_checks_total", id="checks"
        ),
        pytest.param("check latency p50", r"histogram_quantile\(0\.5,.*check_duration", id="p50"),
        pytest.param("check latency p99", r"histogram_quantile\(0\.99,.*check_duration", id="p99"),
        pytest.param(
            "registry requests per registry",
            r"by \(registry, status\).*imagewarden_registry_requests_total",
            id="registry-requests",
        ),
        pytest.param(
            "rate-limit remaining per registry",
            r"by \(registry\).*imagewarden_registry_ratelimit_remaining",
            id="ratelimit",
        ),
        pytest.param(
            "pre-pull coverage per pool",
            r"imagewarden_prepull_pool_nodes_warm\) / sum by \(pool\)",
            id="coverage",
        ),
        pytest.param(
            "pull durations per pool",
            r"by \(le, pool\).*imagewarden_image_pull_duration_seconds_bucket",
            id="pull-durations",
        ),
    ],
)
def test_dashboard_shows(what: str, pattern: str) -> None:
    assert any(re.search(pattern, query) for query in _queries()), f"no panel shows {what}"


def test_no_query_groups_by_an_unbounded_label() -> None:
    """Labels are bounded sets (DESIGN.md): never image, tag, digest or user."""
    for query in _queries():
        for grouping in re.findall(r"by \(([^)]*)\)", query):
            labels = {label.strip() for label in grouping.split(",")}
            assert labels <= {"le", "result", "reason", "registry", "status", "pool", "method"}, (
                query
            )


def test_design_md_is_where_the_test_reads_it() -> None:
    assert Path(DESIGN).is_file(), f"{DESIGN} (shared/DESIGN.md beside the work tree)"
