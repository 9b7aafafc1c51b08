"""The Helm chart, rendered and linted by a real Helm and validated offline.

Covers what the chart promises without a cluster: ``helm lint --strict`` and ``helm template``
with the default values and the ci/ examples, the values schema rejecting misspelt keys with a
message naming the key, ``kubernetes-validate --strict`` for several Kubernetes versions,
restricted pods, wildcard-free RBAC, a config file the imagewarden loader accepts, the values
schema tools, and the hub snippet the README copies from NOTES.txt. The cluster half is in
tests/test_chart_cluster.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import imagewarden
from imagewarden.config import load_config
from imagewarden.prepull.controller import LEASE_NAME, RBAC_RULES
from imagewarden.prepull.pools import DEFAULT_NOOP_IMAGE
from tests.support.helm import (
    CHART_DIR,
    CI_VALUES_DIR,
    REPO_ROOT,
    Rendering,
    kubernetes_validate_binary,
    pod_specs,
    render,
    rendered_config,
    run_helm,
    template_args,
    values_file,
)

EXAMPLES = sorted(path.name for path in CI_VALUES_DIR.glob("*.yaml"))
VALUES_CASES = [
    pytest.param((), id="defaults"),
    *(pytest.param((name,), id=name.removesuffix(".yaml")) for name in EXAMPLES),
]

KUBERNETES_VERSIONS = ["1.25.0", "1.29.0", "1.33.0", "1.37.0"]
"""kubernetes-validate's oldest and newest bundled schemas and two in between. The 1.20 test
cluster's own validation is in tests/test_chart_cluster.py."""

CUSTOM_RESOURCE_KINDS = {"ServiceMonitor"}
"""Kinds kubernetes-validate has no schema for (CRDs); the cluster test creates their CRD."""


def _load_tool(name: str) -> Any:
    path = REPO_ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _render_case(names: tuple[str, ...], **kwargs: Any) -> Rendering:
    return render([values_file(name) for name in names], **kwargs)


# --- lint and template ----------------------------------------------------------------------


@pytest.mark.parametrize("names", VALUES_CASES)
def test_helm_lint_strict_passes(names: tuple[str, ...]) -> None:
    result = run_helm("lint", "--strict", *template_args([values_file(n) for n in names])[1:])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_default_values_render_the_expected_objects() -> None:
    rendering = render()
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in rendering.objects)
    assert kinds == [
        "ClusterRole/jhub-imagewarden-controller-nodes",
        "ClusterRoleBinding/jhub-imagewarden-controller-nodes",
        "ConfigMap/imagewarden-config",
        "Deployment/imagewarden-checker",
        "Deployment/imagewarden-controller",
        "PodDisruptionBudget/imagewarden-checker",
        "Role/imagewarden-controller-prepull",
        "RoleBinding/imagewarden-controller-prepull",
        "Service/imagewarden-checker",
        "Service/imagewarden-controller",
        "ServiceAccount/imagewarden-checker",
        "ServiceAccount/imagewarden-controller",
    ]


def test_cpu_gpu_example_renders_both_pools_and_the_token() -> None:
    rendering = _render_case(("values-cpu-gpu.yaml",))
    settings_text = rendered_config(rendering)
    config = yaml.safe_load(settings_text)
    assert sorted(config["prepull"]["pools"]) == ["cpu", "gpu"]
    assert config["prepull"]["pools"]["gpu"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    checker = rendering.get("Deployment", "imagewarden-checker")["spec"]["template"]["spec"]
    token_volume = next(v for v in checker["volumes"] if v["name"] == "api-token")
    assert token_volume["secret"]["secretName"] == "imagewarden-api-token"
    assert config["service"]["token_file"] == "/etc/imagewarden/api-token/token"


@pytest.mark.parametrize(
    ("release", "override", "expected"),
    [
        pytest.param("imagewarden", "", "imagewarden-checker", id="release-is-chart-name"),
        pytest.param("imagewarden-prod", "", "imagewarden-prod-checker", id="release-contains"),
        pytest.param("jh", "", "jh-imagewarden-checker", id="release-prefixes"),
        pytest.param("jh", "iw", "iw-checker", id="fullname-override"),
    ],
)
def test_names_follow_the_release(release: str, override: str, expected: str) -> None:
    set_values = [f"fullnameOverride={override}"] if override else []
    rendering = render(set_values=set_values, release=release)
    deployment = rendering.get("Deployment", expected)
    service = rendering.get("Service", expected)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"]


def test_templates_spell_no_object_name_by_hand() -> None:
    """Names come from _helpers-names.tpl only, so references cannot drift from objects."""
    offenders = []
    for template in sorted((CHART_DIR / "templates").rglob("*.yaml")):
        for number, line in enumerate(template.read_text().splitlines(), start=1):
            match = re.match(r"\s*name:\s*(.+)$", line)
            if not match or not match.group(1).strip().startswith("{{"):
                continue
            value = match.group(1)
            uses_names_helper = re.search(r'include "imagewarden\.[a-z-]+\.fullname"', value)
            from_values = ".Values." in value or value.strip() in ("{{ . }}",)
            if not (uses_names_helper or from_values):
                offenders.append(f"{template.relative_to(CHART_DIR)}:{number}: {line.strip()}")
    assert offenders == []


def test_component_labels_come_from_the_template_folder() -> None:
    rendering = render(set_values=["serviceMonitor.enabled=true", "networkPolicy.enabled=true"])
    for obj in rendering.objects:
        name = obj["metadata"]["name"]
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        if "checker" in name:
            assert component == "checker", name
        elif "controller" in name:
            assert component == "controller", name


# --- the values schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        pytest.param(
            "checker.replica=3",
            "checker: Additional property replica is not allowed",
            id="checker-replica",
        ),
        pytest.param(
            "controler.enabled=false",
            "Additional property controler is not allowed",
            id="top-level-typo",
        ),
        pytest.param(
            "config.checker.timeout_second=3",
            "config.checker: Additional property timeout_second is not allowed",
            id="config-key-typo",
        ),
        pytest.param(
            "config.policy.dney[0]=quay.io/x/*",
            "config.policy: Additional property dney is not allowed",
            id="deny-typo",
        ),
        pytest.param(
            "config.prepull.pools.gpu.image[0]=quay.io/x/y:1",
            "Additional property image is not allowed",
            id="pool-images-typo",
        ),
        pytest.param(
            "config.checker.failure_mode=ignore",
            "config.checker.failure_mode",
            id="enum",
        ),
        pytest.param("securityContext.runAsUser=0", "securityContext.runAsUser", id="root"),
    ],
)
def test_values_schema_rejects_misspelt_or_bad_values(assignment: str, message: str) -> None:
    result = run_helm("template", *template_args(set_values=[assignment]))
    assert result.returncode != 0
    assert result.stdout == "", "nothing may be rendered from bad values"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_values_schema_json_is_generated_from_the_yaml_source() -> None:
    tool = _load_tool("generate-json-schema")
    assert tool.main(["--check"]) == 0, "run: python3 tools/generate-json-schema.py"
    generated = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert "description" not in json.dumps(generated["properties"]["checker"])


def test_generate_json_schema_strips_only_description_keywords() -> None:
    tool = _load_tool("generate-json-schema")
    schema = {
        "description": "top",
        "properties": {
            "description": {"type": "string", "description": "a property named description"},
            "x": {"type": "object", "description": "gone", "additionalProperties": False},
        },
    }
    assert tool.strip_descriptions(schema) == {
        "properties": {
            "description": {"type": "string"},
            "x": {"type": "object", "additionalProperties": False},
        }
    }


def test_every_schema_object_is_closed() -> None:
    """additionalProperties: false on every object that lists properties."""
    schema = yaml.safe_load((CHART_DIR / "values.schema.yaml").read_text())
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path or "<root>")
            for key, sub in node.items():
                walk(sub, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for index, sub in enumerate(node):
                walk(sub, f"{path}[{index}]")

    walk(schema, "")
    assert open_objects == []


def test_values_files_and_schema_declare_the_same_keys() -> None:
    tool = _load_tool("compare-values-schema-content")
    assert tool.compare(CHART_DIR) == []


@pytest.mark.parametrize(
    ("file_name", "edit", "expected"),
    [
        pytest.param(
            "values.yaml",
            lambda values: values["checker"].update({"replicaz": 2}),
            "values.yaml: checker.replicaz is not in the schema",
            id="undeclared-key",
        ),
        pytest.param(
            "values.schema.yaml",
            lambda schema: schema["properties"]["checker"]["properties"].update(
                {"newKnob": {"type": "boolean"}}
            ),
            "values.schema.yaml: checker.newKnob is set in neither",
            id="undocumented-key",
        ),
    ],
)
def test_compare_tool_reports_disagreements(
    tmp_path: Path, file_name: str, edit: Any, expected: str
) -> None:
    copy = tmp_path / "imagewarden"
    shutil.copytree(CHART_DIR, copy)
    document = yaml.safe_load((copy / file_name).read_text())
    edit(document)
    (copy / file_name).write_text(yaml.safe_dump(document))
    problems = _load_tool("compare-values-schema-content").compare(copy)
    assert any(expected in problem for problem in problems), problems


# --- offline validation ---------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("names", VALUES_CASES)
def test_kubernetes_validate_strict(
    tmp_path: Path, names: tuple[str, ...], kube_version: str
) -> None:
    rendering = _render_case(names, extra_args=["--kube-version", kube_version])
    objects = [o for o in rendering.objects if o["kind"] not in CUSTOM_RESOURCE_KINDS]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [str(kubernetes_validate_binary()), "--strict", "-k", kube_version, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("passed for resource") == len(objects), output
    assert "WARN" not in output, output
    assert "ERROR" not in output, output


def test_kubernetes_validate_strict_catches_an_unknown_field(tmp_path: Path) -> None:
    """The validator run above is able to fail: a misplaced field in a Deployment is caught."""
    deployment = render().get("Deployment", "imagewarden-checker")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"path": "/x"}
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    result = subprocess.run(
        [str(kubernetes_validate_binary()), "--strict", "-k", "1.29.0", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


# --- restricted pods ------------------------------------------------------------------------


@pytest.mark.parametrize("names", VALUES_CASES)
def test_every_container_is_restricted_probed_and_requested(names: tuple[str, ...]) -> None:
    rendering = _render_case(names)
    runs_as = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["securityContext"]
    specs = pod_specs(rendering)
    assert specs, "no workloads rendered"
    for workload, spec in specs.items():
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, workload
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        assert pod_security["runAsUser"] != 0, workload
        containers = spec["containers"] + spec.get("initContainers", [])
        for container in containers:
            where = f"{workload} container {container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "privileged" not in security or security["privileged"] is False, where
            assert container["resources"]["requests"]["cpu"], where
            assert container["resources"]["requests"]["memory"], where
            assert container["readinessProbe"]["httpGet"]["port"] == "http", where
            assert container["livenessProbe"]["httpGet"]["port"] == "http", where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"
        if not names:
            assert pod_security["runAsUser"] == runs_as["runAsUser"]


def test_checker_probes_use_readyz_and_healthz() -> None:
    spec = pod_specs(render())["Deployment/imagewarden-checker"]
    [container] = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][:1] == ["serve"]
    port = container["ports"][0]["containerPort"]
    config = yaml.safe_load(rendered_config(render()))
    assert config["service"] == {
        "host": "0.0.0.0",
        "port": port,
        "max_body_bytes": 16384,
        "max_concurrent_checks": 256,
    }


def test_checker_service_account_holds_no_api_token() -> None:
    rendering = render()
    account = rendering.get("ServiceAccount", "imagewarden-checker")
    assert account["automountServiceAccountToken"] is False
    spec = pod_specs(rendering)["Deployment/imagewarden-checker"]
    assert spec["automountServiceAccountToken"] is False
    bound = [
        subject["name"]
        for binding in rendering.of_kind("RoleBinding") + rendering.of_kind("ClusterRoleBinding")
        for subject in binding["subjects"]
    ]
    assert "imagewarden-checker" not in bound


def test_config_change_rolls_the_pods() -> None:
    def checksum(rendering: Rendering, name: str) -> str:
        deployment = rendering.get("Deployment", name)
        value = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert isinstance(value, str)
        return value

    before = render()
    after = render(set_values=["config.checker.tag_ttl_seconds=30"])
    for name in ("imagewarden-checker", "imagewarden-controller"):
        assert checksum(before, name) != checksum(after, name)
    assert checksum(before, "imagewarden-checker") == checksum(render(), "imagewarden-checker")


def test_controller_can_be_switched_off() -> None:
    rendering = render(set_values=["controller.enabled=false"])
    names = {f"{o['kind']}/{o['metadata']['name']}" for o in rendering.objects}
    assert not any("controller" in name for name in names), names
    assert "Deployment/imagewarden-checker" in names


# --- RBAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("names", VALUES_CASES)
def test_rbac_names_resources_and_verbs_without_wildcards(names: tuple[str, ...]) -> None:
    rendering = _render_case(names)
    roles = rendering.of_kind("Role") + rendering.of_kind("ClusterRole")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: {rule}"
                assert all("*" not in item for item in rule[field])
            assert "nonResourceURLs" not in rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"]


def _grants(rules: Any) -> set[tuple[str, str, str | None, str]]:
    """Rules as (apiGroup, resource, resourceName or None, verb) grants."""
    return {
        (group, resource, name, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in (rule.get("resourceNames") or [None])
        for verb in rule["verbs"]
    }


def test_controller_rbac_mirrors_the_controllers_rbac_rules() -> None:
    """The chart grants exactly what imagewarden.prepull.controller says it calls."""
    rendering = render()
    role = rendering.get("Role", "imagewarden-controller-prepull")
    cluster_role = rendering.get("ClusterRole", "jhub-imagewarden-controller-nodes")
    assert _grants(role["rules"]) == _grants(RBAC_RULES["Role"])
    assert _grants(cluster_role["rules"]) == _grants(RBAC_RULES["ClusterRole"])
    assert role["metadata"]["namespace"] == "jhub"
    assert ("coordination.k8s.io", "leases", LEASE_NAME, "update") in _grants(role["rules"])
    binding = rendering.get("RoleBinding", "imagewarden-controller-prepull")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "imagewarden-controller", "namespace": "jhub"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    cluster_binding = rendering.get("ClusterRoleBinding", "jhub-imagewarden-controller-nodes")
    assert cluster_binding["subjects"] == binding["subjects"]


def test_controller_runs_the_prepull_command_with_its_identity() -> None:
    spec = pod_specs(render())["Deployment/imagewarden-controller"]
    [container] = spec["containers"]
    assert spec["serviceAccountName"] == "imagewarden-controller"
    args = container["args"]
    assert args[:2] == ["prepull", "run"]
    assert args[args.index("--config") + 1] == "/etc/imagewarden/config/config.yaml"
    assert args[args.index("--port") + 1] == str(container["ports"][0]["containerPort"])
    assert args[args.index("--identity") + 1] == "$(POD_NAME)"
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_rbac_follows_the_prepull_namespace() -> None:
    rendering = render(set_values=["config.prepull.namespace=users"])
    assert rendering.get("Role", "imagewarden-controller-prepull")["metadata"]["namespace"] == (
        "users"
    )
    binding = rendering.get("RoleBinding", "imagewarden-controller-prepull")
    assert binding["metadata"]["namespace"] == "users"
    assert binding["subjects"][0]["namespace"] == "jhub"
    config = yaml.safe_load(rendered_config(rendering))
    assert config["prepull"]["namespace"] == "users"


# --- the config file ------------------------------------------------------------------------


@pytest.mark.parametrize("names", VALUES_CASES)
def test_rendered_config_is_accepted_by_the_imagewarden_loader(
    tmp_path: Path, names: tuple[str, ...]
) -> None:
    rendering = _render_case(names)
    fullname = "iw" if "values-everything.yaml" in names else "imagewarden"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(rendered_config(rendering, fullname))
    settings = load_config(config_path)
    assert settings.service.host == "0.0.0.0"
    deployment = rendering.get("Deployment", f"{fullname}-checker")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert settings.service.port == container["ports"][0]["containerPort"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in settings.credentials.dockerconfigjson_files:
        assert str(Path(path).parent) in mounts, f"{path} is not mounted"
    if settings.service.token_file:
        assert str(Path(settings.service.token_file).parent) in mounts


def test_noop_image_defaults_to_the_chart_image() -> None:
    config = load_config_from(render(set_values=["image.tag=1.2.3"]))
    assert config.prepull.noop_image == "quay.io/imagewarden/imagewarden:1.2.3"
    deployment = render(set_values=["image.tag=1.2.3"]).get("Deployment", "imagewarden-checker")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "quay.io/imagewarden/imagewarden:1.2.3"
    )


def test_chart_versions_and_default_image_match_the_package() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == imagewarden.__version__
    config = load_config_from(render())
    assert config.prepull.noop_image == DEFAULT_NOOP_IMAGE


def load_config_from(rendering: Rendering) -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(rendered_config(rendering))
        handle.flush()
        return load_config(handle.name)


def test_unset_prepull_keys_are_left_to_the_loader_defaults() -> None:
    config = yaml.safe_load(rendered_config(render()))
    assert set(config) == {
        "registries",
        "credentials",
        "policy",
        "profiles",
        "checker",
        "service",
        "prepull",
    }
    assert "kubespawner_defaults" not in config["prepull"]
    assert "priority_class_name" not in config["prepull"]
    assert "profile_list" not in config["prepull"]


# --- NetworkPolicy, ServiceMonitor, dashboard ConfigMap -------------------------------------


def test_network_policy_admits_the_hub_and_scrapers_only() -> None:
    rendering = _render_case(("values-everything.yaml",))
    checker = rendering.get("NetworkPolicy", "iw-checker")
    assert checker["spec"]["policyTypes"] == ["Ingress"]
    [rule] = checker["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}.items()
    assert len(rule["from"]) == 2
    controller = rendering.get("NetworkPolicy", "iw-controller")
    [controller_rule] = controller["spec"]["ingress"]
    assert controller_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_network_policy_without_peers_denies_all_ingress() -> None:
    rendering = render(
        set_values=[
            "networkPolicy.enabled=true",
            "networkPolicy.checkerFrom=null",
            "networkPolicy.metricsFrom=null",
        ]
    )
    for name in ("imagewarden-checker", "imagewarden-controller"):
        assert rendering.get("NetworkPolicy", name)["spec"]["ingress"] == []


def test_service_monitors_select_their_services() -> None:
    rendering = _render_case(("values-everything.yaml",))
    for name in ("iw-checker", "iw-controller"):
        monitor = rendering.get("ServiceMonitor", name)
        service = rendering.get("Service", name)
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/metrics", "interval": "15s"}
        ]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_map_ships_the_dashboard_file() -> None:
    rendering = _render_case(("values-everything.yaml",))
    config_map = rendering.get("ConfigMap", "iw-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config_map["data"]["imagewarden.json"])
    assert shipped == json.loads((CHART_DIR / "dashboards" / "imagewarden.json").read_text())


# --- NOTES.txt and the README ---------------------------------------------------------------


def render_notes(tmp_path: Path, values_files: list[Path]) -> str:
    """NOTES.txt as ``helm install`` prints it (``helm template`` does not output NOTES, so a
    copy of the chart gets one extra template that includes it)."""
    copy = tmp_path / "imagewarden"
    shutil.copytree(CHART_DIR, copy)
    (copy / "templates" / "zz-test-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: test-notes\ndata:\n"
        '  notes: {{ include "imagewarden/templates/NOTES.txt" . | toJson }}\n'
    )
    args = ["template", "imagewarden", str(copy), "--namespace", "jhub"]
    for path in values_files:
        args += ["--values", str(path)]
    result = run_helm(*args, "--show-only", "templates/zz-test-notes.yaml", check=True)
    notes = yaml.safe_load(result.stdout)["data"]["notes"]
    assert isinstance(notes, str)
    return notes


def _hub_snippet(notes: str) -> str:
    start = notes.index("\nhub:\n") + 1
    end = notes.index("\n\n", start)
    return notes[start:end]


def _readme_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    marker = "## Install on Kubernetes"
    assert marker in readme, "README.md has no 'Install on Kubernetes' section"
    section = readme[readme.index(marker) :]
    next_heading = section.find("\n## ", len(marker))
    return section if next_heading < 0 else section[:next_heading]


def test_readme_hub_snippet_is_the_one_notes_prints(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, [values_file("values-cpu-gpu.yaml")])
    snippet = _hub_snippet(notes)
    blocks = re.findall(r"```yaml\n(.*?)```", _readme_section(), flags=re.DOTALL)
    assert snippet + "\n" in blocks, f"README lacks the NOTES.txt hub snippet:\n{snippet}"


def test_readme_values_are_the_cpu_gpu_example() -> None:
    example = values_file("values-cpu-gpu.yaml").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", _readme_section(), flags=re.DOTALL)
    assert example in blocks, "README's values block must be ci/values-cpu-gpu.yaml verbatim"


def test_hub_snippet_is_valid_z2jh_values_and_python(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, [values_file("values-cpu-gpu.yaml")])
    values = yaml.safe_load(_hub_snippet(notes))
    keywords = _configure_keywords(values["hub"]["extraConfig"]["imagewarden"])
    assert keywords["url"] == "http://imagewarden-checker.jhub.svc:8080"
    mount = values["hub"]["extraVolumeMounts"][0]
    assert keywords["token_file"] == f"{mount['mountPath']}/token"
    assert values["hub"]["extraVolumes"][0]["secret"]["secretName"] == "imagewarden-api-token"


def test_hub_snippet_without_a_token_mounts_nothing(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, [])
    values = yaml.safe_load(_hub_snippet(notes))
    assert set(values["hub"]) == {"extraConfig"}
    keywords = _configure_keywords(values["hub"]["extraConfig"]["imagewarden"])
    assert keywords == {"url": "http://imagewarden-checker.jhub.svc:8080", "token_file": None}
    assert "No API token is configured" in notes


def _configure_keywords(code: str) -> dict[str | None, Any]:
    tree = ast.parse(code)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    [configure] = [c for c in calls if getattr(c.func, "id", None) == "configure"]
    return {k.arg: ast.literal_eval(k.value) for k in configure.keywords}


def test_hub_snippet_runs_against_the_hub_helper(tmp_path: Path) -> None:
    """The snippet's Python, executed as z2jh's hub would, configures a KubeSpawner."""
    notes = render_notes(tmp_path, [values_file("values-cpu-gpu.yaml")])
    code = yaml.safe_load(_hub_snippet(notes))["hub"]["extraConfig"]["imagewarden"]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    code = code.replace("/etc/imagewarden-api-token/token", str(token_file))
    script = (
        "from traitlets.config import Config\n"
        "c = Config()\n"
        f"exec(compile({code!r}, 'hub.extraConfig.imagewarden', 'exec'))\n"
        "print(sorted(c.KubeSpawner.keys()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != "[]", "configure() set nothing on KubeSpawner"
