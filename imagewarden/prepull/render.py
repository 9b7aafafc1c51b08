"""Render pre-pull pools as DaemonSets: pure functions from config to manifests, no I/O.

The shape follows z2jh's ``image-puller/_helpers-daemonset.tpl``: one DaemonSet per pool,
``maxUnavailable: 100%`` so a new image list rolls every node at once, an init container
per image (init containers run one after the other, so a node pulls one image at a time
and the pod is Running only when all are present), and a tiny main container that keeps
the pod alive so that a node joining later gets its own pod and pulls too.

Unlike z2jh, no image needs a shell: the first init container copies a static no-op
binary from the imagewarden image (:data:`NOOP_BINARY_PATH`) into an ``emptyDir`` and
each image's init container runs that copy.  Images are pinned to the digest the
controller resolved, so a tag that moves upstream changes the pod template and rolls
the pool.  The controller (``prepull.controller``) applies what this module returns and
compares the :data:`SPEC_HASH_ANNOTATION` to decide whether to patch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from imagewarden.prepull.pools import Placement, Pool, PrepullConfig
from imagewarden.reference import Reference, parse

__all__ = [
    "COMPONENT",
    "DAEMONSET_PREFIX",
    "MANAGED_BY_LABEL",
    "MANAGED_BY_VALUE",
    "NOOP_BINARY_PATH",
    "NOOP_MOUNT_PATH",
    "POOL_LABEL",
    "SPEC_HASH_ANNOTATION",
    "PullTarget",
    "ResolvedImage",
    "daemonset_name",
    "explain_lines",
    "pull_targets",
    "render_all",
    "render_daemonset",
    "selector_labels",
    "spec_hash",
    "to_yaml",
]

NOOP_BINARY_PATH: Final = "/usr/local/libexec/imagewarden/noop"
"""Where the imagewarden image keeps the static no-op binary built from ``docker/noop.c``."""

NOOP_MOUNT_PATH: Final = "/imagewarden-bin"
"""Where the ``emptyDir`` holding the copied binary is mounted in every container."""

NOOP_VOLUME: Final = "imagewarden-bin"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "imagewarden"
POOL_LABEL: Final = "imagewarden.io/pool"
COMPONENT: Final = "prepull"
SPEC_HASH_ANNOTATION: Final = "imagewarden.io/spec-hash"
"""sha256 of the rendered object without this annotation; the controller patches when it differs."""

DAEMONSET_PREFIX: Final = "imagewarden-prepull-"
USER_ID: Final = 65534
"""``nobody``: the pods only need to start a static binary, so they never need root."""

RESOURCES: Final[Mapping[str, Mapping[str, str]]] = {
    "requests": {"cpu": "1m", "memory": "4Mi"},
    "limits": {"cpu": "100m", "memory": "32Mi"},
}
"""Small enough to fit beside any user pod; the no-op binary itself needs well under 1 MiB."""


@dataclass(frozen=True)
class ResolvedImage:
    """What the controller learned about one configured image from its registry."""

    digest: str | None
    """Digest to pull (index digest for multi-arch images); ``None`` pulls the tag."""

    size_bytes: int | None = None
    """Compressed size for the pool's platform; larger images are pulled first."""


@dataclass(frozen=True)
class PullTarget:
    """One init container: which configured image it pulls, and as what."""

    image: str
    """The configured image, normalized (the key of the resolution mapping)."""

    pull: str
    """What the pod spec names: ``name@digest`` when resolved, otherwise the reference."""

    container: str
    """Init container name: stable per image, so Events can be traced back to it."""

    size_bytes: int | None
    """Size when known (for ordering and for the status page)."""


def daemonset_name(pool_name: str) -> str:
    """Name of a pool's DaemonSet (pool names are at most 40 characters, so this fits 63)."""
    return f"{DAEMONSET_PREFIX}{pool_name}"


def selector_labels(pool_name: str) -> dict[str, str]:
    """The labels that mark a DaemonSet (and its pods) as ours and say which pool it serves."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        "app.kubernetes.io/component": COMPONENT,
        POOL_LABEL: pool_name,
    }


@functools.lru_cache(maxsize=4096)
def _parsed(image: str) -> Reference:
    """Parse once per image: the controller renders every pool on every reconcile."""
    return parse(image)


@functools.lru_cache(maxsize=4096)
def container_name(image: str) -> str:
    """``pull-<last path segment>-<hash>``: readable, unique per image, a valid DNS label."""
    reference = _parsed(image)
    last_segment = reference.path.rsplit("/", 1)[-1]
    readable = re.sub(r"[^a-z0-9]+", "-", last_segment.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(image.encode()).hexdigest()[:10]
    return f"pull-{readable or 'image'}-{digest}"


def pull_targets(
    pool: Pool, resolved: Mapping[str, ResolvedImage] | None = None
) -> list[PullTarget]:
    """The pool's images in pull order: largest known size first, then most used, then as listed."""
    resolved = resolved or {}
    targets: list[tuple[tuple[bool, int, int, int], PullTarget]] = []
    for index, image in enumerate(pool.images):
        resolution = resolved.get(image)
        reference = _parsed(image)
        digest = resolution.digest if resolution else None
        if digest is None and reference.digest is not None:
            digest = reference.digest
        pull = reference.pinned(digest) if digest else str(reference)
        size = resolution.size_bytes if resolution else None
        target = PullTarget(image, pull, container_name(image), size)
        order = (size is None, -(size or 0), -pool.image_uses.get(image, 1), index)
        targets.append((order, target))
    return [target for _, target in sorted(targets, key=lambda pair: pair[0])]


def _container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources() -> dict[str, Any]:
    return {kind: dict(values) for kind, values in RESOURCES.items()}


def _mount() -> list[dict[str, Any]]:
    return [{"name": NOOP_VOLUME, "mountPath": NOOP_MOUNT_PATH, "readOnly": True}]


def render_daemonset(
    pool: Pool,
    config: PrepullConfig,
    resolved: Mapping[str, ResolvedImage] | None = None,
    *,
    namespace: str | None = None,
) -> dict[str, Any]:
    """One pool's DaemonSet as a plain dict, with :data:`SPEC_HASH_ANNOTATION` set."""
    labels = selector_labels(pool.name)
    all_labels = {"app.kubernetes.io/name": "imagewarden", **labels}
    installer = {
        "name": "install-noop",
        "image": config.noop_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp", NOOP_BINARY_PATH, f"{NOOP_MOUNT_PATH}/noop"],
        "resources": _resources(),
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": NOOP_VOLUME, "mountPath": NOOP_MOUNT_PATH}],
    }
    pullers = [
        {
            "name": target.container,
            "image": target.pull,
            "imagePullPolicy": "IfNotPresent",
            "command": [f"{NOOP_MOUNT_PATH}/noop"],
            "resources": _resources(),
            "securityContext": _container_security_context(),
            "volumeMounts": _mount(),
        }
        for target in pull_targets(pool, resolved)
    ]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
    }
    if pool.node_selector:  # the API drops an empty one; keep what we send equal to what it keeps
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.affinity:
        pod_spec["affinity"] = json.loads(json.dumps(pool.affinity))
    if pool.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pool.tolerations]
    priority_class = pool.priority_class_name or config.priority_class_name
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in config.image_pull_secrets]
    pod_spec.update(
        {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": USER_ID,
                "runAsGroup": USER_ID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [installer, *pullers],
            "containers": [
                {
                    "name": "pause",
                    "image": config.noop_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": [NOOP_BINARY_PATH, "--sleep"],
                    "resources": _resources(),
                    "securityContext": _container_security_context(),
                }
            ],
            "volumes": [{"name": NOOP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}}],
        }
    )
    metadata: dict[str, Any] = {"name": daemonset_name(pool.name)}
    target_namespace = namespace or config.namespace
    if target_namespace:
        metadata["namespace"] = target_namespace
    metadata["labels"] = all_labels
    daemonset: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "100%"},
            },
            "revisionHistoryLimit": 2,
            "template": {"metadata": {"labels": all_labels}, "spec": pod_spec},
        },
    }
    metadata["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(daemonset)}
    return daemonset


def spec_hash(obj: Mapping[str, Any]) -> str:
    """sha256 over canonical JSON of ``obj`` minus :data:`SPEC_HASH_ANNOTATION` itself."""
    metadata = dict(obj.get("metadata") or {})
    annotations = dict(metadata.get("annotations") or {})
    annotations.pop(SPEC_HASH_ANNOTATION, None)
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    canonical = json.dumps({**obj, "metadata": metadata}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_all(
    config: PrepullConfig,
    resolved: Mapping[str, ResolvedImage] | None = None,
    *,
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    """Every pool's DaemonSet, sorted by pool name (pools without images render nothing)."""
    return [
        render_daemonset(config.pools[name], config, resolved, namespace=namespace)
        for name in sorted(config.pools)
        if config.pools[name].images
    ]


def _safe(text: str | None, width: int = 0) -> str:
    """Text for a YAML comment: one line, control characters escaped."""
    if text is None:
        shown = "-"
    elif text.isprintable():
        shown = text
    else:
        shown = json.dumps(text)[1:-1]
    return shown.ljust(width)


def explain_lines(placements: Sequence[Placement]) -> list[str]:
    """``--explain`` table: which profile put which image into which pool, or why not."""
    rows = [
        (p.profile, p.source, p.image or "(none)", p.pool or "(skipped)", p.note)
        for p in placements
    ]
    if not rows:
        return ["no profile_list configured: every pool is written out under prepull.pools"]
    header = ("PROFILE", "FROM", "IMAGE", "POOL", "NOTE")
    widths = [
        min(60, max(len(_safe(row[i])) for row in [header, *rows])) for i in range(len(header))
    ]
    return [
        "  ".join(_safe(cell, widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [header, *rows]
    ]


def to_yaml(documents: Iterable[Mapping[str, Any]], *, comments: Iterable[str] = ()) -> str:
    """Multi-document YAML, optionally preceded by ``#`` comment lines (kept to one line each)."""
    head = "".join(f"# {_safe(line)}\n" for line in comments)
    body = yaml.safe_dump_all(
        [json.loads(json.dumps(d)) for d in documents],
        sort_keys=False,
        explicit_start=True,
        default_flow_style=False,
    )
    return head + body
