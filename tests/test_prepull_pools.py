"""The ``prepull:`` config section: pools, KubeSpawner profile_list pools, refusals by key path."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagewarden.errors import ConfigError
from imagewarden.prepull.pools import (
    MAX_IMAGES_PER_POOL,
    MAX_POOLS,
    KubeSpawnerDefaults,
    Pool,
    PrepullConfig,
    derive_profile_pools,
    parse_prepull,
)

ISSUE_EXAMPLE = """
namespace: jhub
pools:
  cpu: {nodeSelector: {hub.jupyter.org/node-purpose: user},
        images: [quay.io/pangeo/pangeo-notebook:2023.09.11]}
  gpu: {nodeSelector: {cloud.google.com/gke-accelerator: nvidia-tesla-t4},
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}],
        images: [quay.io/pangeo/ml-notebook:2024.01.18]}
"""

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_issue_example_parses_into_two_pools() -> None:
    config = parse_prepull(yaml.safe_load(ISSUE_EXAMPLE))
    assert config.namespace == "jhub"
    assert sorted(config.pools) == ["cpu", "gpu"]
    cpu, gpu = config.pools["cpu"], config.pools["gpu"]
    assert cpu.images == ("quay.io/pangeo/pangeo-notebook:2023.09.11",)
    assert dict(cpu.node_selector) == {"hub.jupyter.org/node-purpose": "user"}
    assert cpu.tolerations == ()
    assert gpu.images == ("quay.io/pangeo/ml-notebook:2024.01.18",)
    assert [dict(t) for t in gpu.tolerations] == [GPU_TOLERATION]
    assert not cpu.from_profiles
    assert config.explanation == ()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(None, PrepullConfig(), id="missing-section"),
        pytest.param({}, PrepullConfig(), id="empty-section"),
        pytest.param({"pools": {}}, PrepullConfig(), id="no-pools"),
        pytest.param(
            {"pools": {"cpu": {"images": ["ubuntu:22.04", "quay.io/a/b@sha256:" + "a" * 64]}}},
            PrepullConfig(
                pools={
                    "cpu": Pool(
                        name="cpu",
                        images=(
                            "docker.io/library/ubuntu:22.04",
                            "quay.io/a/b@sha256:" + "a" * 64,
                        ),
                        image_uses={
                            "docker.io/library/ubuntu:22.04": 1,
                            "quay.io/a/b@sha256:" + "a" * 64: 1,
                        },
                    )
                }
            ),
            id="images-normalized-digest-kept",
        ),
        pytest.param(
            {
                "namespace": "hub",
                "noop_image": "127.0.0.1:5000/imagewarden:dev",
                "priority_class_name": "imagewarden-prepull",
                "image_pull_secrets": ["regcred"],
                "platform": "linux/arm64",
                "resolve_interval_seconds": 60,
            },
            PrepullConfig(
                namespace="hub",
                noop_image="127.0.0.1:5000/imagewarden:dev",
                priority_class_name="imagewarden-prepull",
                image_pull_secrets=("regcred",),
                platform="linux/arm64",
                resolve_interval_seconds=60.0,
            ),
            id="top-level-settings",
        ),
        pytest.param(
            {
                "pools": {
                    "arm": {
                        "images": ["ubuntu"],
                        "platform": "linux/arm64/v8",
                        "priorityClassName": "low",
                        "affinity": {"nodeAffinity": {"x": 1}},
                        "tolerations": [
                            {"operator": "Exists"},
                            {
                                "key": "k",
                                "value": "v",
                                "effect": "NoExecute",
                                "tolerationSeconds": 30,
                            },
                        ],
                    }
                }
            },
            PrepullConfig(
                pools={
                    "arm": Pool(
                        name="arm",
                        images=("docker.io/library/ubuntu",),
                        tolerations=(
                            {"operator": "Exists"},
                            {
                                "key": "k",
                                "value": "v",
                                "effect": "NoExecute",
                                "tolerationSeconds": 30,
                            },
                        ),
                        affinity={"nodeAffinity": {"x": 1}},
                        priority_class_name="low",
                        platform="linux/arm64/v8",
                        image_uses={"docker.io/library/ubuntu": 1},
                    )
                }
            ),
            id="pool-settings",
        ),
    ],
)
def test_valid_sections(data: object, expected: PrepullConfig) -> None:
    assert parse_prepull(data) == expected


def _pools(**pools: object) -> dict[str, Any]:
    return {"pools": pools}


def _alias_bomb() -> object:
    """10**8 leaves through 8 levels of YAML aliases, in a few hundred bytes of text."""
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        previous = ", ".join([f"*{chr(ord(level) - 1)}"] * 10)
        text += f"{level}: &{level} [{previous}]\n"
    return yaml.safe_load(
        text + "pools: {cpu: {images: [ubuntu], affinity: {nodeAffinity: {x: *h}}}}"
    )


def _deep(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("data", "key_path", "message"),
    [
        pytest.param([], "prepull", "must be a mapping, got a list", id="section-not-mapping"),
        pytest.param("pools", "prepull", "must be a mapping", id="section-string"),
        pytest.param({"pool": {}}, "prepull.pool", "unknown key", id="unknown-top-key"),
        pytest.param({"pools": []}, "prepull.pools", "must be a mapping", id="pools-list"),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "nodeselector": {}}),
            "prepull.pools.cpu.nodeselector",
            "unknown key; expected one of: nodeSelector",
            id="unknown-pool-key-typo",
        ),
        pytest.param(
            _pools(GPU={"images": ["ubuntu"]}), "prepull.pools.GPU", "lower-case", id="upper-name"
        ),
        pytest.param(
            _pools(**{"a" * 41: {"images": ["ubuntu"]}}),
            "prepull.pools." + "a" * 41,
            "at most 40",
            id="pool-name-too-long",
        ),
        pytest.param(
            _pools(**{"cpu\nkind: Secret": {"images": ["ubuntu"]}}),
            'prepull.pools["cpu\\nkind: Secret"]',
            "lower-case",
            id="pool-name-newline",
        ),
        pytest.param(_pools(cpu={}), "prepull.pools.cpu.images", "is required", id="no-images"),
        pytest.param(_pools(cpu=None), "prepull.pools.cpu", "got null", id="pool-null"),
        pytest.param(
            _pools(cpu={"images": "ubuntu"}),
            "prepull.pools.cpu.images",
            "must be a list, got a string",
            id="images-string",
        ),
        pytest.param(
            _pools(gpu={"images": ["ubuntu", "Quay.io/Pangeo/X"]}),
            "prepull.pools.gpu.images[1]",
            "is not an image reference",
            id="bad-image-index",
        ),
        pytest.param(
            _pools(gpu={"images": ["ubuntu", " ubuntu"]}),
            "prepull.pools.gpu.images[1]",
            "is not an image reference",
            id="image-whitespace",
        ),
        pytest.param(
            _pools(gpu={"images": ["ubuntu", 7]}),
            "prepull.pools.gpu.images[1]",
            "must be a string, got int",
            id="image-int",
        ),
        pytest.param(
            _pools(gpu={"images": ["a" * 5000]}),
            "prepull.pools.gpu.images[0]",
            "at most 4096",
            id="image-oversized",
        ),
        pytest.param(
            _pools(gpu={"images": ["https://quay.io/a/b:1"]}),
            "prepull.pools.gpu.images[0]",
            "is not an image reference",
            id="image-url",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu", "docker.io/library/ubuntu"]}),
            "prepull.pools.cpu.images[1]",
            "already listed as images[0]",
            id="duplicate-spelled-differently",
        ),
        pytest.param(
            _pools(cpu={"images": [f"quay.io/a/b:{i}" for i in range(MAX_IMAGES_PER_POOL + 1)]}),
            "prepull.pools.cpu.images",
            f"at most {MAX_IMAGES_PER_POOL}",
            id="too-many-images",
        ),
        pytest.param(
            {"pools": {f"p{i}": {"images": ["ubuntu"]} for i in range(MAX_POOLS + 1)}},
            "prepull.pools",
            f"at most {MAX_POOLS}",
            id="too-many-pools",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "nodeSelector": {"hub.jupyter.org/node-purpose": 1}}),
            'prepull.pools.cpu.nodeSelector["hub.jupyter.org/node-purpose"]',
            "must be a string, got int",
            id="selector-value-int",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "nodeSelector": {"a b": "x"}}),
            'prepull.pools.cpu.nodeSelector["a b"]',
            "label key name",
            id="selector-key-space",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "nodeSelector": {"Bad_Prefix/x": "x"}}),
            'prepull.pools.cpu.nodeSelector["Bad_Prefix/x"]',
            "prefix",
            id="selector-key-prefix",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "nodeSelector": {"k": "v" * 64}}),
            "prepull.pools.cpu.nodeSelector.k",
            "at most 63",
            id="selector-value-too-long",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "nodeSelector": {1: "x"}}),
            "prepull.pools.cpu.nodeSelector",
            "keys must be strings",
            id="selector-int-key",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "tolerations": {"key": "a"}}),
            "prepull.pools.cpu.tolerations",
            "must be a list",
            id="tolerations-mapping",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "tolerations": [{"key": "a", "oprator": "Exists"}]}),
            "prepull.pools.cpu.tolerations[0].oprator",
            "unknown key",
            id="toleration-typo",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "tolerations": [{"key": "a", "operator": "In"}]}),
            "prepull.pools.cpu.tolerations[0].operator",
            "Exists or Equal",
            id="toleration-operator",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "tolerations": [{"key": "a", "effect": "Never"}]}),
            "prepull.pools.cpu.tolerations[0].effect",
            "NoSchedule",
            id="toleration-effect",
        ),
        pytest.param(
            _pools(
                cpu={
                    "images": ["ubuntu"],
                    "tolerations": [{"key": "a", "operator": "Exists", "value": "b"}],
                }
            ),
            "prepull.pools.cpu.tolerations[0].value",
            "empty when operator is Exists",
            id="toleration-exists-value",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "tolerations": [{"value": "b"}]}),
            "prepull.pools.cpu.tolerations[0]",
            "without a key must use operator: Exists",
            id="toleration-keyless-equal",
        ),
        pytest.param(
            _pools(
                cpu={"images": ["ubuntu"], "tolerations": [{"key": "a", "tolerationSeconds": 5}]}
            ),
            "prepull.pools.cpu.tolerations[0].tolerationSeconds",
            "only allowed with effect: NoExecute",
            id="toleration-seconds-noschedule",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "affinity": {"nodeAfinity": {}}}),
            "prepull.pools.cpu.affinity.nodeAfinity",
            "unknown key",
            id="affinity-typo",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "priorityClassName": "Low Priority"}),
            "prepull.pools.cpu.priorityClassName",
            "DNS subdomain",
            id="priority-class-bad",
        ),
        pytest.param(
            _pools(
                cpu={"images": ["ubuntu"], "nodeSelector": {"a": "1"}},
                cpu2={"images": ["debian"], "nodeSelector": {"a": "1"}},
            ),
            "prepull.pools.cpu2",
            "selects the same nodes as pool 'cpu'",
            id="same-placement-twice",
        ),
        pytest.param({"namespace": "Jhub"}, "prepull.namespace", "lower-case", id="namespace"),
        pytest.param(
            {"resolve_interval_seconds": "5m"},
            "prepull.resolve_interval_seconds",
            "number of seconds",
            id="interval-string",
        ),
        pytest.param(
            {"resolve_interval_seconds": True},
            "prepull.resolve_interval_seconds",
            "number of seconds",
            id="interval-bool",
        ),
        pytest.param(
            {"resolve_interval_seconds": 0},
            "prepull.resolve_interval_seconds",
            "between 5 and",
            id="interval-zero",
        ),
        pytest.param({"platform": "amd64"}, "prepull.platform", "os/arch", id="platform"),
        pytest.param(
            {"image_pull_secrets": "regcred"},
            "prepull.image_pull_secrets",
            "must be a list",
            id="secrets-string",
        ),
        pytest.param(
            {"image_pull_secrets": ["ok", "Not_OK"]},
            "prepull.image_pull_secrets[1]",
            "DNS subdomain",
            id="secret-name",
        ),
        pytest.param(
            {"noop_image": "quay.io/UPPER/x"},
            "prepull.noop_image",
            "not an image reference",
            id="noop",
        ),
        pytest.param(
            {"kubespawner_defaults": {"image": "ubuntu"}},
            "prepull.kubespawner_defaults",
            "only used together with profile_list",
            id="defaults-without-profiles",
        ),
        pytest.param(_alias_bomb(), "prepull", "too large", id="yaml-alias-bomb"),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "affinity": {"nodeAffinity": _deep(80)}}),
            "prepull.pools.cpu.affinity.nodeAffinity" + ".k" * 61,  # the 65th level
            "nested more than 64 levels",
            id="deeply-nested",
        ),
        pytest.param(
            _pools(cpu={"images": ["ubuntu"], "affinity": {"nodeAffinity": {"x": b"bytes"}}}),
            "prepull.pools.cpu.affinity.nodeAffinity.x",
            "plain YAML data",
            id="binary-value",
        ),
    ],
)
def test_refusals_name_the_key_path(data: object, key_path: str, message: str) -> None:
    before = copy.deepcopy(data)
    with pytest.raises(ConfigError) as caught:
        parse_prepull(data)
    assert caught.value.key_path == key_path
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{key_path}: ")
    assert data == before, "parsing must not change its input"


def test_custom_key_path_prefix() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_prepull({"pools": {"cpu": {"images": [""]}}}, key_path="values.prepull")
    assert caught.value.key_path == "values.prepull.pools.cpu.images[0]"


# ---------------------------------------------------------------------------------------------
# profile_list


def _profiles(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


Z2JH_PROFILES = """
kubespawner_defaults:
  image: quay.io/jupyter/base-notebook:2024-01-01
  node_selector: {hub.jupyter.org/node-purpose: user}
profile_list:
  - display_name: "Small CPU"
    default: true
    profile_options:
      image:
        display_name: Image
        choices:
          scipy:
            display_name: SciPy
            kubespawner_override: {image: quay.io/jupyter/scipy-notebook:2024-01-01}
          pangeo:
            display_name: Pangeo
            kubespawner_override: {image: quay.io/pangeo/pangeo-notebook:2023.09.11}
        unlisted_choice:
          enabled: true
          display_name: Other image
          validation_regex: "^quay.io/.+:.+$"
          kubespawner_override: {image: "{value}"}
  - display_name: "GPU"
    slug: gpu
    kubespawner_override:
      image: quay.io/pangeo/ml-notebook:2024.01.18
      node_selector:
        cloud.google.com/gke-accelerator: nvidia-tesla-t4
        hub.jupyter.org/node-purpose: null
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  - display_name: "Default image only"
"""


def test_profile_list_groups_images_by_placement() -> None:
    config = parse_prepull(_profiles(Z2JH_PROFILES))
    by_selector = {tuple(sorted(p.node_selector.items())): p for p in config.pools.values()}
    cpu = by_selector[(("hub.jupyter.org/node-purpose", "user"),)]
    gpu = by_selector[(("cloud.google.com/gke-accelerator", "nvidia-tesla-t4"),)]
    assert len(config.pools) == 2
    assert cpu.images == (
        "quay.io/jupyter/scipy-notebook:2024-01-01",
        "quay.io/pangeo/pangeo-notebook:2023.09.11",
        "quay.io/jupyter/base-notebook:2024-01-01",
    )
    assert cpu.tolerations == ()
    assert gpu.images == ("quay.io/pangeo/ml-notebook:2024.01.18",)
    assert [dict(t) for t in gpu.tolerations] == [GPU_TOLERATION]
    assert cpu.from_profiles
    assert gpu.from_profiles
    assert cpu.name.startswith("user-")
    assert gpu.name.startswith("nvidia-tesla-t4-")


def test_explanation_says_which_profile_put_which_image_where() -> None:
    config = parse_prepull(_profiles(Z2JH_PROFILES))
    rows = {(p.profile, p.source, p.image, p.pool is not None, p.note) for p in config.explanation}
    gpu_pool = next(p for p in config.pools.values() if p.tolerations).name
    assert rows == {
        ("small-cpu", "image.scipy", "quay.io/jupyter/scipy-notebook:2024-01-01", True, ""),
        ("small-cpu", "image.pangeo", "quay.io/pangeo/pangeo-notebook:2023.09.11", True, ""),
        (
            "small-cpu",
            "image.unlisted_choice",
            None,
            False,
            "free-text choice: image unknown in advance",
        ),
        ("gpu", "kubespawner_override", "quay.io/pangeo/ml-notebook:2024.01.18", True, ""),
        (
            "default-image-only",
            "defaults",
            "quay.io/jupyter/base-notebook:2024-01-01",
            True,
            "",
        ),
    }
    assert {p.pool for p in config.explanation if p.profile == "gpu"} == {gpu_pool}


def test_gpu_images_never_join_cpu_pools() -> None:
    config = parse_prepull(_profiles(Z2JH_PROFILES))
    for pool in config.pools.values():
        is_gpu = "cloud.google.com/gke-accelerator" in pool.node_selector
        assert ("quay.io/pangeo/ml-notebook:2024.01.18" in pool.images) == is_gpu


def test_profile_images_join_a_written_pool_with_the_same_nodes() -> None:
    data = _profiles(Z2JH_PROFILES)
    data["pools"] = {
        "gpu": {
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
            # same toleration, spelled with keys in another order
            "tolerations": [
                {"effect": "NoSchedule", "operator": "Exists", "key": "nvidia.com/gpu"}
            ],
            "images": ["quay.io/pangeo/ml-notebook:2024.01.18", "nvcr.io/nvidia/pytorch:24.01-py3"],
            "priorityClassName": "gpu-low",
        }
    }
    config = parse_prepull(data)
    gpu = config.pools["gpu"]
    assert gpu.images == (
        "quay.io/pangeo/ml-notebook:2024.01.18",
        "nvcr.io/nvidia/pytorch:24.01-py3",
    )
    assert gpu.image_uses["quay.io/pangeo/ml-notebook:2024.01.18"] == 2
    assert gpu.priority_class_name == "gpu-low"
    assert not gpu.from_profiles
    assert len(config.pools) == 2
    gpu_row = next(p for p in config.explanation if p.profile == "gpu")
    assert (gpu_row.pool, gpu_row.note) == ("gpu", "same nodes as a pool under prepull.pools")


def test_derived_pool_names_survive_renaming_and_reordering_profiles() -> None:
    data = _profiles(Z2JH_PROFILES)
    names = set(parse_prepull(data).pools)
    data["profile_list"].reverse()
    data["profile_list"][0]["display_name"] = "Renamed"
    data["profile_list"][1]["slug"] = "gpu-renamed"
    assert set(parse_prepull(data).pools) == names


def test_choice_that_moves_the_pod_sends_every_image_of_that_combination_there() -> None:
    profile_list = _profiles("""
- display_name: Flexible
  kubespawner_override: {node_selector: {pool: cpu}}
  profile_options:
    image:
      display_name: Image
      choices:
        a: {kubespawner_override: {image: quay.io/x/a:1}}
        b: {kubespawner_override: {image: quay.io/x/b:1}}
    hardware:
      display_name: Hardware
      choices:
        cpu: {display_name: CPU}
        gpu:
          kubespawner_override:
            node_selector: {pool: gpu}
            tolerations: [{key: nvidia.com/gpu, operator: Exists}]
""")
    pools, placements = derive_profile_pools(profile_list)
    images = {dict(p.node_selector)["pool"]: set(p.images) for p in pools.values()}
    assert images == {
        "cpu": {"quay.io/x/a:1", "quay.io/x/b:1"},
        "gpu": {"quay.io/x/a:1", "quay.io/x/b:1"},
    }
    assert len(placements) == 4


def test_unlisted_choice_deciding_the_nodes_is_skipped() -> None:
    profile_list = [
        {
            "display_name": "Pick a pool",
            "kubespawner_override": {"image": "quay.io/x/a:1"},
            "profile_options": {
                "nodes": {
                    "display_name": "Nodes",
                    "unlisted_choice": {
                        "enabled": True,
                        "kubespawner_override": {"node_selector": {"pool": "{value}"}},
                    },
                }
            },
        }
    ]
    pools, placements = derive_profile_pools(profile_list)
    assert pools == {}
    assert [(p.image, p.pool, p.note) for p in placements] == [
        (None, None, "free-text choice decides the nodes: placement unknown")
    ]


def test_profile_list_as_dict_and_image_spec_alias() -> None:
    profile_list = {
        "first": {"display_name": "First", "kubespawner_override": {"image_spec": "ubuntu:22.04"}}
    }
    pools, placements = derive_profile_pools(profile_list)
    (pool,) = pools.values()
    assert pool.images == ("docker.io/library/ubuntu:22.04",)
    assert pool.name.startswith("any-node-")
    assert placements[0].profile == "first"


def test_profile_without_image_and_no_default_is_explained() -> None:
    pools, placements = derive_profile_pools([{"display_name": "Nothing"}])
    assert pools == {}
    assert placements[0].note == "no image set (no kubespawner_defaults.image)"


def test_disabled_unlisted_choice_adds_no_row() -> None:
    profile_list = [
        {
            "display_name": "P",
            "profile_options": {
                "image": {
                    "display_name": "Image",
                    "choices": {"a": {"kubespawner_override": {"image": "quay.io/x/a:1"}}},
                    "unlisted_choice": {
                        "enabled": False,
                        "kubespawner_override": {"image": "{value}"},
                    },
                }
            },
        }
    ]
    _, placements = derive_profile_pools(profile_list)
    assert [p.source for p in placements] == ["image.a"]


@pytest.mark.parametrize(
    ("profile_list", "key_path", "message"),
    [
        pytest.param(
            "not profiles", "prepull.profile_list", "must be a mapping", id="profile-list-string"
        ),
        pytest.param(
            [{"display_name": "X", "kubespawner_overide": {}}],
            "prepull.profile_list[0].kubespawner_overide",
            "unknown key",
            id="profile-typo",
        ),
        pytest.param(
            [
                {"display_name": "ok", "kubespawner_override": {"image": "ubuntu"}},
                {
                    "display_name": "X",
                    "profile_options": {
                        "image": {
                            "display_name": "I",
                            "choices": {
                                "a": {"kubespawner_override": {"image": "quay.io/Upper:x"}}
                            },
                        }
                    },
                },
            ],
            "prepull.profile_list[1].profile_options.image.choices.a.kubespawner_override.image",
            "not an image reference",
            id="bad-choice-image",
        ),
        pytest.param(
            [{"display_name": "X", "kubespawner_override": {"image": ["ubuntu"]}}],
            "prepull.profile_list[0].kubespawner_override.image",
            "must be a string",
            id="image-list",
        ),
        pytest.param(
            [
                {
                    "display_name": "X",
                    "kubespawner_override": {"image": "ubuntu", "node_selector": {"a": 5}},
                }
            ],
            "prepull.profile_list[0].kubespawner_override.node_selector.a",
            "must be a string",
            id="selector-int",
        ),
        pytest.param(
            [
                {
                    "display_name": "X",
                    "kubespawner_override": {
                        "image": "ubuntu",
                        "tolerations": [{"key": "a", "operator": "Maybe"}],
                    },
                }
            ],
            "prepull.profile_list[0].kubespawner_override.tolerations[0].operator",
            "Exists or Equal",
            id="toleration-bad",
        ),
        pytest.param(
            [
                {
                    "display_name": "X",
                    "profile_options": {"o": {"display_name": "O", "choices": {"a": {"x": 1}}}},
                }
            ],
            "prepull.profile_list[0].profile_options.o.choices.a.x",
            "unknown key",
            id="choice-unknown-key",
        ),
        pytest.param(
            [
                {
                    "display_name": "X",
                    "profile_options": {
                        f"o{n}": {
                            "display_name": "O",
                            "choices": {f"c{i}": {} for i in range(9)},
                        }
                        for n in range(4)
                    },
                }
            ],
            "prepull.profile_list[0].profile_options",
            "more than 4096 combinations",
            id="combinatorial-explosion",
        ),
        pytest.param(
            [{"display_name": "x" * 5000}],
            "prepull.profile_list[0].display_name",
            "at most 4096",
            id="oversized-display-name",
        ),
    ],
)
def test_profile_list_refusals(profile_list: object, key_path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_prepull({"profile_list": profile_list})
    assert caught.value.key_path == key_path
    assert message in str(caught.value)


def test_kubespawner_defaults_refusals() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_prepull({"profile_list": [], "kubespawner_defaults": {"nodeSelector": {}}})
    assert caught.value.key_path == "prepull.kubespawner_defaults.nodeSelector"


# ---------------------------------------------------------------------------------------------
# The derivation must agree with what a real KubeSpawner does with the same profile_list.

AGREEMENT_PROFILES = """
- display_name: CPU
  kubespawner_override: {node_selector: {pool: cpu, extra: "yes"}}
  profile_options:
    image:
      display_name: Image
      choices:
        a: {kubespawner_override: {image: "quay.io/x/a:1"}}
        b: {kubespawner_override: {image: "quay.io/x/b:1", node_selector: {extra: null}}}
    size:
      display_name: Size
      choices:
        small: {display_name: Small}
        gpu:
          kubespawner_override:
            node_selector: {pool: gpu}
            tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
            node_affinity_required:
              - matchExpressions: [{key: gpu-type, operator: In, values: [t4, a100]}]
- display_name: Base
  slug: base
"""


@pytest.fixture
def kubespawner_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KubeSpawner(_mock=True) still loads a kubeconfig; give it one that points nowhere."""
    import kubernetes_asyncio.config.kube_config as kube_config

    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    return path


async def test_derivation_matches_real_kubespawner(kubespawner_kubeconfig: Path) -> None:
    from kubespawner import KubeSpawner

    profile_list = yaml.safe_load(AGREEMENT_PROFILES)
    defaults = KubeSpawnerDefaults(
        image="quay.io/x/base:1",
        node_selector={"node-purpose": "user"},
        tolerations=({"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user"},),
    )
    pools, _ = derive_profile_pools(copy.deepcopy(profile_list), defaults=defaults)

    observed: set[tuple[str, str]] = set()
    for profile in profile_list:
        slug = profile.get("slug") or profile["display_name"].lower()
        options = profile.get("profile_options", {})
        for picked in itertools.product(*(sorted(o["choices"]) for o in options.values())):
            spawner = KubeSpawner(
                _mock=True,
                profile_list=copy.deepcopy(profile_list),
                image=defaults.image,
                node_selector=dict(defaults.node_selector),
                tolerations=[dict(t) for t in defaults.tolerations],
            )
            spawner.user_options = {"profile": slug, **dict(zip(options, picked, strict=True))}
            await spawner.load_user_options()
            matching = [
                pool
                for pool in pools.values()
                if dict(pool.node_selector) == spawner.node_selector
                and [dict(t) for t in pool.tolerations] == spawner.tolerations
                and (pool.affinity or {})
                .get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution", {})
                .get("nodeSelectorTerms", [])
                == spawner.node_affinity_required
            ]
            assert len(matching) == 1, (slug, picked, spawner.node_selector)
            assert f"quay.io/x/{spawner.image.split('/')[-1]}" in matching[0].images
            observed.add((matching[0].name, spawner.image))

    derived = {(pool.name, image) for pool in pools.values() for image in pool.images}
    assert derived == observed
