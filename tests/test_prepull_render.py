"""DaemonSet rendering: z2jh image-puller shape, shell-free init containers, digests, order."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from imagewarden.prepull.pools import Placement, Pool, PrepullConfig, parse_prepull
from imagewarden.prepull.render import (
    MANAGED_BY_LABEL,
    NOOP_BINARY_PATH,
    NOOP_MOUNT_PATH,
    POOL_LABEL,
    SPEC_HASH_ANNOTATION,
    ResolvedImage,
    container_name,
    daemonset_name,
    explain_lines,
    pull_targets,
    render_all,
    render_daemonset,
    spec_hash,
    to_yaml,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
ML = "quay.io/pangeo/ml-notebook:2024.01.18"
PANGEO = "quay.io/pangeo/pangeo-notebook:2023.09.11"

CONFIG = parse_prepull(
    yaml.safe_load(
        """
namespace: jhub
priority_class_name: imagewarden-prepull
image_pull_secrets: [regcred]
noop_image: 127.0.0.1:5000/imagewarden/imagewarden:dev
pools:
  cpu:
    nodeSelector: {hub.jupyter.org/node-purpose: user}
    images: [quay.io/pangeo/pangeo-notebook:2023.09.11, quay.io/jupyter/base-notebook:2024-01-01]
  gpu:
    nodeSelector: {cloud.google.com/gke-accelerator: nvidia-tesla-t4}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms: [{matchExpressions: [{key: gpu, operator: Exists}]}]
    priorityClassName: gpu-prepull
    images: [quay.io/pangeo/ml-notebook:2024.01.18]
  empty: {nodeSelector: {x: y}, images: []}
"""
    )
)


def _pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return pod


def _all_containers(daemonset: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(daemonset)
    return [*pod["initContainers"], *pod["containers"]]


def test_one_daemonset_per_pool_with_images() -> None:
    documents = render_all(CONFIG)
    assert [d["metadata"]["name"] for d in documents] == [
        "imagewarden-prepull-cpu",
        "imagewarden-prepull-gpu",
    ]
    assert {d["kind"] for d in documents} == {"DaemonSet"}
    assert {d["apiVersion"] for d in documents} == {"apps/v1"}
    assert {d["metadata"]["namespace"] for d in documents} == {"jhub"}


@pytest.mark.parametrize("pool_name", ["cpu", "gpu"])
def test_z2jh_image_puller_shape(pool_name: str) -> None:
    """The points z2jh's image-puller/_helpers-daemonset.tpl relies on, per pool."""
    pool = CONFIG.pools[pool_name]
    daemonset = render_daemonset(pool, CONFIG)
    spec, pod = daemonset["spec"], _pod(daemonset)
    assert spec["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "100%"},
    }
    assert pod["terminationGracePeriodSeconds"] == 0
    assert pod["automountServiceAccountToken"] is False
    assert pod.get("nodeSelector", {}) == dict(pool.node_selector)
    assert pod.get("tolerations", []) == [dict(t) for t in pool.tolerations]
    assert pod.get("affinity") == (dict(pool.affinity) if pool.affinity else None)
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    # selector labels are ours and name the pool; template labels include them
    selector = spec["selector"]["matchLabels"]
    assert selector[MANAGED_BY_LABEL] == "imagewarden"
    assert selector[POOL_LABEL] == pool_name
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert selector.items() <= daemonset["metadata"]["labels"].items()
    assert len(pod["containers"]) == 1
    assert len(pod["initContainers"]) == 1 + len(pool.images)


def test_priority_class_pool_overrides_config() -> None:
    assert _pod(render_daemonset(CONFIG.pools["gpu"], CONFIG))["priorityClassName"] == "gpu-prepull"
    assert (
        _pod(render_daemonset(CONFIG.pools["cpu"], CONFIG))["priorityClassName"]
        == "imagewarden-prepull"
    )
    bare = PrepullConfig(pools={"p": Pool("p", images=(ML,))})
    assert "priorityClassName" not in _pod(render_daemonset(bare.pools["p"], bare))
    assert "imagePullSecrets" not in _pod(render_daemonset(bare.pools["p"], bare))
    assert "namespace" not in render_daemonset(bare.pools["p"], bare)["metadata"]


def test_no_image_needs_a_shell() -> None:
    daemonset = render_daemonset(CONFIG.pools["cpu"], CONFIG)
    pod = _pod(daemonset)
    installer, *pullers = pod["initContainers"]
    (main,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if "emptyDir" in v)
    # the first init container copies the binary from the imagewarden image into the emptyDir
    assert installer["image"] == CONFIG.noop_image
    assert installer["command"] == ["cp", NOOP_BINARY_PATH, f"{NOOP_MOUNT_PATH}/noop"]
    assert {"name": volume["name"], "mountPath": NOOP_MOUNT_PATH} in installer["volumeMounts"]
    # every image runs that copy, read-only, and nothing that needs /bin/sh
    for puller in pullers:
        assert puller["command"] == [f"{NOOP_MOUNT_PATH}/noop"]
        assert "args" not in puller
        assert puller["volumeMounts"] == [
            {"name": volume["name"], "mountPath": NOOP_MOUNT_PATH, "readOnly": True}
        ]
        assert puller["imagePullPolicy"] == "IfNotPresent"
    # the main container is the same binary sleeping, from the imagewarden image
    assert main["image"] == CONFIG.noop_image
    assert main["command"] == [NOOP_BINARY_PATH, "--sleep"]
    assert not any("sh" in part for c in _all_containers(daemonset) for part in c["command"][:1])


def test_restricted_security_everywhere() -> None:
    daemonset = render_daemonset(CONFIG.pools["gpu"], CONFIG)
    pod = _pod(daemonset)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _all_containers(daemonset):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 65534
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["resources"]["requests"]["memory"].endswith("Mi")


@pytest.mark.parametrize(
    ("image", "resolved", "expected_pull"),
    [
        pytest.param(ML, None, ML, id="unresolved-uses-tag"),
        pytest.param(
            ML,
            ResolvedImage(DIGEST_A, 10),
            f"quay.io/pangeo/ml-notebook@{DIGEST_A}",
            id="resolved-pins-digest",
        ),
        pytest.param(
            f"quay.io/x/y@{DIGEST_B}", None, f"quay.io/x/y@{DIGEST_B}", id="configured-digest"
        ),
        pytest.param(
            f"quay.io/x/y:1@{DIGEST_B}",
            ResolvedImage(DIGEST_B),
            f"quay.io/x/y@{DIGEST_B}",
            id="tag-and-digest",
        ),
        pytest.param(
            "ubuntu",
            ResolvedImage(None, 5),
            "docker.io/library/ubuntu",
            id="resolution-without-digest",
        ),
    ],
)
def test_pinning(image: str, resolved: ResolvedImage | None, expected_pull: str) -> None:
    normalized = parse_prepull({"pools": {"p": {"images": [image]}}}).pools["p"]
    mapping = {normalized.images[0]: resolved} if resolved else {}
    (target,) = pull_targets(normalized, mapping)
    assert target.pull == expected_pull
    daemonset = render_daemonset(normalized, CONFIG, mapping)
    assert _pod(daemonset)["initContainers"][1]["image"] == expected_pull


def _pool(images: list[str], uses: dict[str, int] | None = None) -> Pool:
    return Pool("p", images=tuple(images), image_uses=uses or dict.fromkeys(images, 1))


@pytest.mark.parametrize(
    ("pool", "sizes", "expected"),
    [
        pytest.param(_pool(["quay.io/a/1", "quay.io/a/2"]), {}, ["1", "2"], id="as-listed"),
        pytest.param(
            _pool(["quay.io/a/1", "quay.io/a/2", "quay.io/a/3"]),
            {"quay.io/a/1": 10, "quay.io/a/2": 30, "quay.io/a/3": 20},
            ["2", "3", "1"],
            id="largest-first",
        ),
        pytest.param(
            _pool(["quay.io/a/1", "quay.io/a/2", "quay.io/a/3"]),
            {"quay.io/a/3": 5},
            ["3", "1", "2"],
            id="known-size-before-unknown",
        ),
        pytest.param(
            _pool(
                ["quay.io/a/1", "quay.io/a/2", "quay.io/a/3"],
                {"quay.io/a/1": 1, "quay.io/a/2": 3, "quay.io/a/3": 2},
            ),
            {},
            ["2", "3", "1"],
            id="most-used-first",
        ),
        pytest.param(
            _pool(["quay.io/a/1", "quay.io/a/2"], {"quay.io/a/1": 1, "quay.io/a/2": 9}),
            {"quay.io/a/1": 100, "quay.io/a/2": 100},
            ["2", "1"],
            id="same-size-then-uses",
        ),
    ],
)
def test_pull_order(pool: Pool, sizes: dict[str, int], expected: list[str]) -> None:
    resolved = {image: ResolvedImage(DIGEST_A, size) for image, size in sizes.items()}
    order = [t.image.rsplit("/", 1)[-1] for t in pull_targets(pool, resolved)]
    assert order == expected
    rendered = _pod(render_daemonset(pool, PrepullConfig(), resolved))["initContainers"][1:]
    assert [c["name"] for c in rendered] == [container_name(f"quay.io/a/{n}") for n in expected]


def test_spec_hash_follows_content() -> None:
    pool = CONFIG.pools["cpu"]
    first = render_daemonset(pool, CONFIG)
    assert first == render_daemonset(pool, CONFIG), "rendering must be deterministic"
    assert first["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(first)
    assert re.fullmatch(r"[0-9a-f]{64}", spec_hash(first))
    moved = render_daemonset(pool, CONFIG, {PANGEO: ResolvedImage(DIGEST_A)})
    moved_again = render_daemonset(pool, CONFIG, {PANGEO: ResolvedImage(DIGEST_B)})
    hashes = {spec_hash(first), spec_hash(moved), spec_hash(moved_again)}
    assert len(hashes) == 3
    # the annotation itself never feeds the hash
    tampered = copy.deepcopy(first)
    tampered["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = "other"
    assert spec_hash(tampered) == spec_hash(first)
    # any other change does
    tampered["spec"]["template"]["spec"]["nodeSelector"]["x"] = "y"
    assert spec_hash(tampered) != spec_hash(first)


def test_rendering_copies_instead_of_sharing() -> None:
    pool = CONFIG.pools["gpu"]
    daemonset = render_daemonset(pool, CONFIG)
    _pod(daemonset)["tolerations"][0]["key"] = "changed"
    _pod(daemonset)["affinity"]["nodeAffinity"] = {}
    _pod(daemonset)["initContainers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert render_daemonset(pool, CONFIG) != daemonset
    assert pool.tolerations[0]["key"] == "nvidia.com/gpu"


@pytest.mark.parametrize(
    "images",
    [
        pytest.param(["quay.io/a/notebook:1", "quay.io/b/notebook:1"], id="same-last-segment"),
        pytest.param(["quay.io/a/notebook:1", "quay.io/a/notebook:2"], id="same-name-two-tags"),
        pytest.param(["quay.io/a/" + "x" * 200 + ":1"], id="very-long-segment"),
        pytest.param(["quay.io/a/a.b__c:1", "quay.io/a/a-b-c:1"], id="same-after-slugging"),
    ],
)
def test_container_names_are_unique_dns_labels(images: list[str]) -> None:
    pool = parse_prepull({"pools": {"p": {"images": images}}}).pools["p"]
    names = [c["name"] for c in _pod(render_daemonset(pool, CONFIG))["initContainers"]]
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= 63
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_daemonset_name_fits_a_label_for_the_longest_pool_name() -> None:
    longest = "p" * 40
    config = parse_prepull({"pools": {longest: {"images": ["ubuntu"]}}})
    (daemonset,) = render_all(config)
    assert daemonset["metadata"]["name"] == daemonset_name(longest)
    assert len(daemonset["metadata"]["name"]) <= 63


def test_yaml_round_trips() -> None:
    documents = render_all(CONFIG, {ML: ResolvedImage(DIGEST_A, 3)})
    text = to_yaml(documents)
    assert text.startswith("---\n")
    assert list(yaml.safe_load_all(text)) == documents


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param("evil\nkind: Secret", id="newline"),
        pytest.param("evil\r---\r", id="carriage-return-document-marker"),
        pytest.param("evil\x00\x1b[31m", id="nul-and-escape"),
        pytest.param("evil\u2028kind: Secret", id="unicode-line-separator"),
    ],
)
def test_explain_comments_cannot_inject_yaml(profile: str) -> None:
    placement = Placement(profile, "kubespawner_override", ML, "gpu")
    text = to_yaml(render_all(CONFIG), comments=explain_lines([placement]))
    comment_lines = [line for line in text.splitlines() if not line.startswith(("---", " "))]
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["DaemonSet", "DaemonSet"]
    assert len(text.splitlines()) == len(to_yaml(render_all(CONFIG)).splitlines()) + 2
    assert any("evil" in line and line.startswith("# ") for line in comment_lines)


def test_explain_lines_table() -> None:
    config = parse_prepull(
        {
            "kubespawner_defaults": {"image": "quay.io/x/base:1"},
            "profile_list": [
                {
                    "display_name": "Data Science",
                    "profile_options": {
                        "image": {
                            "display_name": "Image",
                            "choices": {"a": {"kubespawner_override": {"image": "quay.io/x/a:1"}}},
                            "unlisted_choice": {
                                "enabled": True,
                                "kubespawner_override": {"image": "{value}"},
                            },
                        }
                    },
                }
            ],
        }
    )
    lines = explain_lines(config.explanation)
    assert lines[0].split() == ["PROFILE", "FROM", "IMAGE", "POOL", "NOTE"]
    assert lines[1].split()[:4] == ["data-science", "image.a", "quay.io/x/a:1", *config.pools]
    assert lines[2].split()[:4] == ["data-science", "image.unlisted_choice", "(none)", "(skipped)"]
    assert "free-text" in lines[2]
    assert explain_lines(()) == [
        "no profile_list configured: every pool is written out under prepull.pools"
    ]
