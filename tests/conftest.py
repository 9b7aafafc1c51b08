"""Root conftest: registers the fixture plugins that start real components."""

pytest_plugins: list[str] = [
    "tests.support.registry_fixtures",
    "tests.support.agent_fixtures",
    "tests.support.kube_fixtures",
    "tests.support.hub",
]
