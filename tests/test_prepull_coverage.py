"""Coverage bookkeeping from API objects (as the API's JSON spells them) and kubelet events."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from imagewarden.metrics import Metrics
from imagewarden.prepull.cli import format_status
from imagewarden.prepull.coverage import Coverage, PullEvent, parse_go_duration, parse_pull_event
from imagewarden.prepull.pools import parse_prepull
from imagewarden.prepull.render import ResolvedImage, container_name, render_daemonset

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
NOTEBOOK = "quay.io/x/notebook:1"
TOOLS = "quay.io/x/tools:2"
PULL_NOTEBOOK = f"quay.io/x/notebook@{DIGEST_A}"
PULL_TOOLS = f"quay.io/x/tools@{DIGEST_B}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("0s", 0.0, id="zero"),
        pytest.param("0", 0.0, id="bare-zero"),
        pytest.param("1.5s", 1.5, id="seconds"),
        pytest.param("812ms", 0.812, id="milliseconds"),
        pytest.param("2m3.5s", 123.5, id="minutes"),
        pytest.param("1h2m3s", 3723.0, id="hours"),
        pytest.param("1.2µs", 1.2e-6, id="micro-sign"),
        pytest.param("3us", 3e-6, id="micro-ascii"),
        pytest.param("1.234567891s", 1.234567891, id="nanosecond-precision"),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "1.5", "s", "1.5sx", "-1s", "1 s", "1e9s", "1.5s " * 3, "ms5"],
    ids=[
        "empty",
        "no-unit",
        "no-number",
        "trailing",
        "negative",
        "space",
        "exponent",
        "repeat",
        "unit-first",
    ],
)
def test_go_duration_refusals(text: str) -> None:
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        pytest.param(
            "Pulling",
            'Pulling image "quay.io/x/a:1"',
            PullEvent("pulling", "quay.io/x/a:1"),
            id="pulling",
        ),
        pytest.param(
            "Pulled",
            'Successfully pulled image "quay.io/x/a:1" in 1.234567s',
            PullEvent("pulled", "quay.io/x/a:1", 1.234567),
            id="pulled-1.20",
        ),
        pytest.param(
            "Pulled",
            'Successfully pulled image "quay.io/x/a:1" in 2m3.5s (2m4s including waiting)',
            PullEvent("pulled", "quay.io/x/a:1", 123.5),
            id="pulled-1.27",
        ),
        pytest.param(
            "Pulled",
            'Successfully pulled image "quay.io/x/a@sha256:'
            + "a" * 64
            + '" in 812ms (1.5s including waiting). Image size: 12345 bytes.',
            PullEvent("pulled", "quay.io/x/a@sha256:" + "a" * 64, 0.812, 12345),
            id="pulled-1.29-with-size",
        ),
        pytest.param(
            "Pulled",
            'Container image "quay.io/x/a:1" already present on machine',
            PullEvent("present", "quay.io/x/a:1"),
            id="already-present",
        ),
        pytest.param(
            "Pulled",
            'Successfully pulled image "quay.io/x/a:1" in 1e9s',
            PullEvent("pulled", "quay.io/x/a:1"),
            id="pulled-garbled-duration",
        ),
        pytest.param(
            "Failed",
            'Failed to pull image "quay.io/x/a:1": rpc error: code = NotFound',
            PullEvent(
                "failed",
                "quay.io/x/a:1",
                error='Failed to pull image "quay.io/x/a:1": rpc error: code = NotFound',
            ),
            id="failed",
        ),
        pytest.param("Failed", "Error: ErrImagePull", None, id="failed-summary-not-counted"),
        pytest.param("Failed", "Error: ImagePullBackOff", None, id="backoff-summary"),
        pytest.param(
            "BackOff",
            'Back-off pulling image "quay.io/x/a:1"',
            PullEvent("backoff", "quay.io/x/a:1", error='Back-off pulling image "quay.io/x/a:1"'),
            id="backoff",
        ),
        pytest.param("BackOff", "Back-off restarting failed container", None, id="crash-backoff"),
        pytest.param("Created", "Created container pull-a", None, id="other-event"),
    ],
)
def test_pull_events(reason: str, message: str, expected: PullEvent | None) -> None:
    assert parse_pull_event(reason, message) == expected


def test_hostile_event_messages_stay_bounded() -> None:
    huge = 'Failed to pull image "' + "x" * 1_000_000 + '": boom'
    started = time.monotonic()
    parsed = parse_pull_event("Failed", huge)
    assert time.monotonic() - started < 1.0
    assert parsed is not None
    assert parsed.image is None or len(parsed.image) <= 1024
    assert parsed.error is not None
    assert len(parsed.error) <= 1024
    pathological = 'Successfully pulled image "a" in ' + "1" * 100_000 + "s"
    started = time.monotonic()
    parse_pull_event("Pulled", pathological)
    assert time.monotonic() - started < 1.0


# ---------------------------------------------------------------------------------------------

CONFIG = parse_prepull(
    {
        "pools": {
            "cpu": {"nodeSelector": {"pool": "cpu"}, "images": [NOTEBOOK, TOOLS]},
            "gpu": {"nodeSelector": {"pool": "gpu"}, "images": [NOTEBOOK]},
        }
    }
)
_uids = itertools.count()


def _daemonset(pool: str, resolved: dict[str, ResolvedImage] | None = None) -> dict[str, Any]:
    return render_daemonset(
        CONFIG.pools[pool],
        CONFIG,
        resolved or {NOTEBOOK: ResolvedImage(DIGEST_A), TOOLS: ResolvedImage(DIGEST_B)},
        namespace="ns",
    )


def _pod(
    pool: str,
    node: str,
    *,
    suffix: str = "abcde",
    via_affinity: bool = False,
    completed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A DaemonSet pod as the API returns it (spec from the rendered template)."""
    template = _daemonset(pool)["spec"]["template"]
    spec = dict(template["spec"])
    if via_affinity:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": [node]}
                            ]
                        }
                    ]
                }
            }
        }
    else:
        spec["nodeName"] = node
    statuses = [
        {"name": name, "image": image, "state": {"terminated": {"exitCode": 0}}}
        for name, image in (completed or {}).items()
    ]
    return {
        "metadata": {
            "name": f"imagewarden-prepull-{pool}-{suffix}",
            "labels": template["metadata"]["labels"],
        },
        "spec": spec,
        "status": {"initContainerStatuses": statuses},
    }


def _node(name: str, *images: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "images": [{"names": [image], "sizeBytes": 1} for image in images],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _event(
    pod: str, reason: str, message: str, *, container: str, count: int = 1, uid: str | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid or f"uid-{next(_uids)}", "name": "e"},
        "involvedObject": {
            "kind": "Pod",
            "name": pod,
            "fieldPath": f"spec.initContainers{{{container}}}",
        },
        "reason": reason,
        "message": message,
        "count": count,
        "source": {"component": "kubelet", "host": "cpu-1"},
    }


@pytest.fixture
def coverage() -> Coverage:
    tracked = Coverage(CONFIG, Metrics(CollectorRegistry()), clock=lambda: 1000.0)
    tracked.replace_daemonsets([_daemonset("cpu"), _daemonset("gpu")])
    return tracked


def _sample(coverage: Coverage, name: str, **labels: str) -> float:
    value = coverage.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_pool_nodes_and_warmth(coverage: Coverage) -> None:
    coverage.replace_nodes(
        [
            _node("cpu-1", PULL_NOTEBOOK, PULL_TOOLS),
            _node("cpu-2", PULL_NOTEBOOK),
            _node("gpu-1", PULL_NOTEBOOK, "quay.io/x/tools:2"),
        ]
    )
    coverage.replace_pods(
        [
            _pod("cpu", "cpu-1", suffix="aaaaa"),
            _pod("cpu", "cpu-2", suffix="bbbbb", via_affinity=True),
            _pod("gpu", "gpu-1", suffix="ccccc"),
        ]
    )
    coverage.update_gauges()
    assert coverage.pool_nodes("cpu") == ["cpu-1", "cpu-2"]
    assert coverage.pool_nodes("gpu") == ["gpu-1"]
    assert _sample(coverage, "imagewarden_prepull_pool_nodes", pool="cpu") == 2
    assert _sample(coverage, "imagewarden_prepull_pool_nodes_warm", pool="cpu") == 1
    assert _sample(coverage, "imagewarden_prepull_pool_nodes_warm", pool="gpu") == 1
    snapshot = coverage.snapshot()["pools"]
    cpu_images = {i["image"]: i for i in snapshot["cpu"]["images"]}
    assert cpu_images[TOOLS]["nodes"] == {"cpu-1": "present", "cpu-2": "waiting"}
    assert cpu_images[TOOLS]["pull"] == PULL_TOOLS
    assert cpu_images[NOTEBOOK]["nodes_warm"] == 2
    assert snapshot["cpu"]["nodes_warm"] == 1
    assert snapshot["gpu"]["nodes_total"] == 1


def test_tag_pulled_elsewhere_is_not_the_pinned_digest(coverage: Coverage) -> None:
    coverage.replace_nodes([_node("cpu-1", NOTEBOOK, "quay.io/x/tools:2")])
    coverage.replace_pods([_pod("cpu", "cpu-1")])
    coverage.update_gauges()
    assert _sample(coverage, "imagewarden_prepull_pool_nodes_warm", pool="cpu") == 0


def test_finished_init_container_counts_when_node_status_is_truncated(coverage: Coverage) -> None:
    coverage.replace_nodes([_node("cpu-1", PULL_NOTEBOOK)])  # tools fell out of the top 50
    tools_container = container_name(TOOLS)
    coverage.replace_pods([_pod("cpu", "cpu-1", completed={tools_container: PULL_TOOLS})])
    coverage.update_gauges()
    assert _sample(coverage, "imagewarden_prepull_pool_nodes_warm", pool="cpu") == 1


def test_deleted_node_leaves_the_pool(coverage: Coverage) -> None:
    coverage.replace_nodes([_node("cpu-1"), _node("cpu-2")])
    coverage.replace_pods([_pod("cpu", "cpu-1", suffix="a1111"), _pod("cpu", "cpu-2")])
    coverage.node_event("DELETED", _node("cpu-2"))
    assert coverage.pool_nodes("cpu") == ["cpu-1"]
    coverage.replace_nodes([_node("cpu-2")])  # a re-list without cpu-1: it is gone too
    assert coverage.pool_nodes("cpu") == ["cpu-2"]


def test_events_count_once_per_occurrence(coverage: Coverage) -> None:
    coverage.replace_pods([_pod("cpu", "cpu-1")])
    pod = "imagewarden-prepull-cpu-abcde"
    container = container_name(NOTEBOOK)
    pulled = _event(
        pod,
        "Pulled",
        f'Successfully pulled image "{PULL_NOTEBOOK}" in 2.5s (3s including waiting). '
        "Image size: 4096 bytes.",
        container=container,
        uid="pulled-1",
    )
    coverage.event_seen(
        _event(pod, "Pulling", f'Pulling image "{PULL_NOTEBOOK}"', container=container)
    )
    assert coverage.snapshot()["pools"]["cpu"]["images"][0]["nodes"] == {"cpu-1": "pulling"}
    coverage.event_seen(pulled)
    coverage.event_seen(pulled)  # the same event again (a re-list): not a new pull
    assert _sample(coverage, "imagewarden_image_pulls_total", pool="cpu", result="success") == 1
    assert _sample(coverage, "imagewarden_image_pull_duration_seconds_count", pool="cpu") == 1
    assert _sample(coverage, "imagewarden_image_pull_duration_seconds_sum", pool="cpu") == 2.5
    coverage.event_seen({**pulled, "count": 3})  # two more occurrences at once
    assert _sample(coverage, "imagewarden_image_pulls_total", pool="cpu", result="success") == 3
    assert _sample(coverage, "imagewarden_image_pull_duration_seconds_count", pool="cpu") == 3
    image = next(i for i in coverage.snapshot()["pools"]["cpu"]["images"] if i["image"] == NOTEBOOK)
    assert image["last_pull_duration_seconds"] == 2.5
    assert image["last_pull_node"] == "cpu-1"
    assert image["size_bytes"] == 4096
    assert image["pulls"] == {"success": 3, "failure": 0, "skipped": 0}
    assert _sample(coverage, "imagewarden_image_pulls_total", pool="gpu", result="success") == 0


def test_failures_and_skips(coverage: Coverage) -> None:
    coverage.replace_pods([_pod("cpu", "cpu-1")])
    pod = "imagewarden-prepull-cpu-abcde"
    container = container_name(TOOLS)
    failure = f'Failed to pull image "{PULL_TOOLS}": rpc error: code = NotFound desc = not found'
    coverage.event_seen(_event(pod, "Failed", failure, container=container))
    coverage.event_seen(_event(pod, "Failed", "Error: ErrImagePull", container=container))
    coverage.event_seen(
        _event(pod, "BackOff", f'Back-off pulling image "{PULL_TOOLS}"', container=container)
    )
    coverage.event_seen(
        _event(
            pod,
            "Pulled",
            f'Container image "{PULL_NOTEBOOK}" already present on machine',
            container=container_name(NOTEBOOK),
        )
    )
    assert _sample(coverage, "imagewarden_image_pulls_total", pool="cpu", result="failure") == 1
    assert _sample(coverage, "imagewarden_image_pulls_total", pool="cpu", result="skipped") == 1
    tools = next(i for i in coverage.snapshot()["pools"]["cpu"]["images"] if i["image"] == TOOLS)
    assert tools["last_error"] == f'Back-off pulling image "{PULL_TOOLS}"'
    assert tools["last_error_node"] == "cpu-1"


@pytest.mark.parametrize(
    "involved",
    [
        pytest.param({"kind": "Pod", "name": "jupyter-alice"}, id="user-pod"),
        pytest.param({"kind": "Node", "name": "imagewarden-prepull-cpu-abcde"}, id="not-a-pod"),
        pytest.param({"kind": "Pod", "name": "imagewarden-prepull-gone-abcde"}, id="unknown-pool"),
    ],
)
def test_foreign_events_are_ignored(coverage: Coverage, involved: dict[str, str]) -> None:
    coverage.event_seen(
        {
            "metadata": {"uid": "x"},
            "involvedObject": involved,
            "reason": "Pulled",
            "message": f'Successfully pulled image "{PULL_NOTEBOOK}" in 1s',
            "count": 1,
        }
    )
    assert coverage.metrics.registry.get_sample_value(
        "imagewarden_image_pull_duration_seconds_count", {"pool": "cpu"}
    ) in (None, 0.0)


def test_event_before_its_pod_is_known_uses_the_pod_name(coverage: Coverage) -> None:
    coverage.event_seen(
        _event(
            "imagewarden-prepull-gpu-zzzzz",
            "Pulled",
            f'Successfully pulled image "{PULL_NOTEBOOK}" in 1s',
            container=container_name(NOTEBOOK),
        )
    )
    assert _sample(coverage, "imagewarden_image_pulls_total", pool="gpu", result="success") == 1


def test_targets_follow_the_live_daemonset_and_fall_back_to_config() -> None:
    tracked = Coverage(CONFIG, Metrics(CollectorRegistry()))
    assert [t[1] for t in tracked.targets("gpu")] == [NOTEBOOK]  # nothing deployed: tags
    tracked.daemonset_event("ADDED", _daemonset("gpu"))
    assert [t[1] for t in tracked.targets("gpu")] == [PULL_NOTEBOOK]
    tracked.daemonset_event("MODIFIED", _daemonset("gpu", {NOTEBOOK: ResolvedImage(DIGEST_B)}))
    assert [t[:2] for t in tracked.targets("gpu")] == [(NOTEBOOK, f"quay.io/x/notebook@{DIGEST_B}")]
    tracked.daemonset_event("DELETED", _daemonset("gpu"))
    assert tracked.snapshot()["pools"]["gpu"]["deployed"] is False


def test_untagged_image_matches_latest_on_the_node() -> None:
    config = parse_prepull({"pools": {"p": {"images": ["quay.io/x/plain"]}}})
    tracked = Coverage(config, Metrics(CollectorRegistry()))
    tracked.replace_nodes([_node("n", "quay.io/x/plain:latest")])
    pod = {
        "metadata": {"name": "imagewarden-prepull-p-aaaaa", "labels": {"imagewarden.io/pool": "p"}},
        "spec": {"nodeName": "n"},
    }
    tracked.replace_pods([pod])
    assert tracked.snapshot()["pools"]["p"]["nodes_warm"] == 1


def test_format_status_table() -> None:
    document = {
        "identity": "pod-1",
        "leader": True,
        "pools": {
            "cpu": {
                "daemonset": "imagewarden-prepull-cpu",
                "deployed": True,
                "nodes_total": 4,
                "nodes_warm": 1,
                "images": [
                    {
                        "image": NOTEBOOK,
                        "nodes_warm": 3,
                        "nodes_total": 4,
                        "size_bytes": 5 * 1024**3,
                        "last_pull_duration_seconds": 73.25,
                        "last_pull_node": "cpu-2",
                        "last_error": None,
                    },
                    {
                        "image": TOOLS,
                        "nodes_warm": 0,
                        "nodes_total": 4,
                        "last_error": "Failed\n\x1b[31mred\x1b[0m",
                    },
                ],
            },
            "empty": {"daemonset": "d", "deployed": False, "nodes_total": 0, "images": []},
        },
    }
    text = format_status(document)
    lines = text.splitlines()
    assert lines[0] == "controller pod-1 (leader)"
    assert "pool cpu: 1/4 nodes warm  [imagewarden-prepull-cpu]" in lines
    notebook = next(line for line in lines if NOTEBOOK in line)
    assert "3/4" in notebook
    assert "[###############.....]" in notebook
    assert "5.0 GiB" in notebook
    assert "73.2s (cpu-2)" in notebook
    tools = next(line for line in lines if TOOLS in line)
    assert "[....................]" in tools
    assert "\x1b" not in text
    assert "Failed\\n\\u001b[31mred" in tools
    assert "pool empty: 0/0 nodes warm  (DaemonSet not created yet)  [d]" in lines


def test_removed_pool_series_disappear(coverage: Coverage) -> None:
    coverage.replace_nodes([_node("gpu-1", PULL_NOTEBOOK)])
    coverage.replace_pods([_pod("gpu", "gpu-1")])
    coverage.update_gauges()
    assert _sample(coverage, "imagewarden_prepull_pool_nodes", pool="gpu") == 1
    only_cpu = parse_prepull(
        {"pools": {"cpu": {"nodeSelector": {"pool": "cpu"}, "images": [TOOLS]}}}
    )
    coverage.set_config(only_cpu)
    coverage.update_gauges()
    registry = coverage.metrics.registry
    assert registry.get_sample_value("imagewarden_prepull_pool_nodes", {"pool": "gpu"}) is None
    assert (
        registry.get_sample_value(
            "imagewarden_image_pulls_total", {"pool": "gpu", "result": "success"}
        )
        is None
    )
    # The live DaemonSet lists both until the controller patches it; the image that is no
    # longer configured shows as what the pod pulls.
    assert [image for image, _, _ in coverage.targets("cpu")] == [PULL_NOTEBOOK, TOOLS]
    assert list(coverage.snapshot()["pools"]) == ["cpu"]
