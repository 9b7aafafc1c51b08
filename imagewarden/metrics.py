"""Every Prometheus metric imagewarden exports, on one explicit ``CollectorRegistry``.

Labels come only from bounded sets (result, reason class, method, status, a configured registry
host or pool name), never an image name, tag, digest or user: per-image detail belongs in the
``/status`` JSON and the CLI. The service, controller and agent each create one :class:`Metrics`
and serve it; tests create a fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

import imagewarden

CHECK_RESULTS = ("allowed", "refused", "error")
"""Values of ``checks_total{result}``."""
CHECK_REASONS = (
    "ok",
    "invalid_reference",
    "policy",
    "not_found",
    "tag_missing",
    "unauthorized",
    "platform",
    "unsupported_manifest",
    "registry_unavailable",
    "registry_error",
    "stale",
    "failure_mode_allow",
)
"""Values of ``checks_total{reason}``: the class of the decision, not its text."""
CACHE_RESULTS = ("hit", "miss", "stale", "coalesced")

# Registry latency on loopback is ~1 ms, on the internet 50 ms - 2 s; spawns wait ≤ 1 s.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Image pulls of 5-20 GB take minutes.
_PULL_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


class Metrics:
    """The metric families, registered on ``registry`` (a new one when not given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Info("imagewarden_build", "imagewarden version.", registry=r)
        self.build_info.info({"version": imagewarden.__version__})

        self.checks_total = Counter(
            "imagewarden_checks_total",
            "Image checks by result and reason class.",
            ["result", "reason"],
            registry=r,
        )
        self.check_duration_seconds = Histogram(
            "imagewarden_check_duration_seconds",
            "Time for one whole check (parse, policy, registry).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.registry_requests_total = Counter(
            "imagewarden_registry_requests_total",
            "HTTP requests to registries and their token services.",
            ["registry", "method", "status"],
            registry=r,
        )
        self.registry_request_duration_seconds = Histogram(
            "imagewarden_registry_request_duration_seconds",
            "Latency of registry HTTP requests.",
            ["registry"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.registry_ratelimit_remaining = Gauge(
            "imagewarden_registry_ratelimit_remaining",
            "Last RateLimit-Remaining a registry reported (Docker Hub pull budget).",
            ["registry"],
            registry=r,
        )
        self.cache_lookups_total = Counter(
            "imagewarden_cache_lookups_total",
            "Checker cache lookups: hit, miss, stale (served after a registry error), coalesced.",
            ["result"],
            registry=r,
        )
        self.prepull_pool_nodes = Gauge(
            "imagewarden_prepull_pool_nodes",
            "Nodes that match a pre-pull pool.",
            ["pool"],
            registry=r,
        )
        self.prepull_pool_nodes_warm = Gauge(
            "imagewarden_prepull_pool_nodes_warm",
            "Nodes of a pool that hold every image of the pool at its current digest.",
            ["pool"],
            registry=r,
        )
        self.image_pull_duration_seconds = Histogram(
            "imagewarden_image_pull_duration_seconds",
            "Duration of image pulls reported by kubelets or done by the agent.",
            ["pool"],
            buckets=_PULL_BUCKETS,
            registry=r,
        )
        self.image_pulls_total = Counter(
            "imagewarden_image_pulls_total",
            "Image pulls by pool and result (success, failure, skipped).",
            ["pool", "result"],
            registry=r,
        )
        self.agent_pull_bytes_total = Counter(
            "imagewarden_agent_pull_bytes_total",
            "Compressed bytes the node agent downloaded.",
            ["pool"],
            registry=r,
        )
        self.agent_images_wanted = Gauge(
            "imagewarden_agent_images_wanted",
            "Images the agent's pool wants present on this node.",
            ["pool"],
            registry=r,
        )
        self.agent_images_present = Gauge(
            "imagewarden_agent_images_present",
            "Wanted images present on this node at their current digest.",
            ["pool"],
            registry=r,
        )
        for result in CACHE_RESULTS:
            self.cache_lookups_total.labels(result=result)
