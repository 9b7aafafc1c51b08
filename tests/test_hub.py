"""imagewarden.hub with real KubeSpawner objects, real registries and a real checker service.

Each spawn goes through the same steps as in JupyterHub and KubeSpawner: the form (or a REST
API body) becomes ``user_options``; ``pre_spawn_hook`` runs (``User.spawn``); then, as in
``KubeSpawner._start``, ``load_user_options()`` applies the profile, ``get_pod_manifest()``
builds the pod and ``modify_pod_hook`` runs. Nothing is submitted: KubeSpawner's kubeconfig
points nowhere (``spawner_kubeconfig``). The end-to-end test with a real hub and API server is
tests/test_hub_e2e.py.

Every spawn table row runs in both modes, in-process (a Checker in the hub) and HTTP (the
service app on 127.0.0.1), and the two must give the same pod and the same message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jupyterhub.utils import maybe_future
from tornado.web import HTTPError
from traitlets.config import Config

from imagewarden.config import Settings, parse_settings
from imagewarden.hub import ImageGuard, configure
from imagewarden.service import create_app
from tests.support.hub import hub_settings_document, profile_list
from tests.support.registry import RunningRegistry, free_port
from tests.support.registry_fixtures import SeededImages

TOKEN = "hub-to-service-token-5f1e"
PANGEO = "quay.io/pangeo/pangeo-notebook"


@pytest.fixture(autouse=True)
def _kubeconfig(spawner_kubeconfig: Path) -> None:
    """Every KubeSpawner here loads a kubeconfig that points nowhere."""


@pytest.fixture
def hub_settings(
    token_registry: RunningRegistry, open_registry: RunningRegistry, seeded_images: SeededImages
) -> Settings:
    return parse_settings(hub_settings_document(token_registry.url, open_registry.url))


@pytest.fixture
async def service_url(hub_settings: Settings) -> AsyncIterator[str]:
    """The checker service (create_app) on a 127.0.0.1 port, with a token."""
    async with TestServer(create_app(hub_settings, token=TOKEN), host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


@pytest.fixture
async def make_guard(
    hub_settings: Settings, service_url: str
) -> AsyncIterator[Callable[[str, Config], ImageGuard]]:
    """``make_guard(mode, c)``: configure() in ``in_process`` or ``http`` mode; closed after."""
    guards: list[ImageGuard] = []

    def make(mode: str, c: Config, **options: Any) -> ImageGuard:
        if mode == "in_process":
            guard = configure(c, settings=hub_settings, **options)
        else:
            guard = configure(c, url=service_url, token=TOKEN, **options)
        guards.append(guard)
        return guard

    yield make
    for guard in guards:
        await guard.aclose()


def make_spawner(c: Config) -> Any:
    from kubespawner import KubeSpawner

    return KubeSpawner(_mock=True, config=c, profile_list=profile_list())


def form(profile: str, typed: str) -> dict[str, list[str]]:
    """What the browser posts when "Other..." is picked: the select's name is removed."""
    return {"profile": [profile], f"profile-option-{profile}--image--unlisted-choice": [typed]}


async def spawn(spawner: Any, *, formdata: Mapping[str, list[str]] | None = None,
                user_options: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """Run a spawn's steps up to the pod KubeSpawner would submit; returns that pod."""
    if formdata is not None:
        spawner.user_options = await maybe_future(spawner.run_options_from_form(dict(formdata)))
    else:
        spawner.user_options = user_options or {}
    await maybe_future(spawner.run_pre_spawn_hook())  # User.spawn
    await spawner.load_user_options()  # KubeSpawner._start from here on
    pod = await spawner.get_pod_manifest()
    if spawner.modify_pod_hook:
        pod = await maybe_future(spawner.modify_pod_hook(spawner, pod))
    return pod


def notebook_image(pod: Any) -> str:
    (container,) = [c for c in pod.spec.containers if c.name == "notebook"]
    image: str = container.image
    return image


@dataclass(frozen=True)
class Outcome:
    """What the user gets: a pod image, or an HTTP status and the message on the form."""

    image: str | None = None
    status: int | None = None
    message: str | None = None


async def outcome_of(spawner: Any, **request: Any) -> Outcome:
    try:
        pod = await spawn(spawner, **request)
    except HTTPError as error:
        message = getattr(error, "jupyterhub_message", None)
        return Outcome(status=error.status_code, message=message)
    return Outcome(image=notebook_image(pod))


def pinned(seeded: SeededImages, name: str, repo_tag: str) -> str:
    return f"{name}@{seeded[repo_tag]}"


# (request, expected image or None, expected status, substrings of the message)
SPAWNS = [
    pytest.param(
        {"formdata": form("cpu", f"{PANGEO}:2023.09.11")},
        (PANGEO, "pangeo/pangeo-notebook:2023.09.11"), None, (),
        id="form-cpu-allowed-pinned",
    ),
    pytest.param(
        {"formdata": form("cpu", "ubuntu:22.04")},
        ("docker.io/library/ubuntu", "library/ubuntu:22.04"), None, (),
        id="form-hub-familiar-name",
    ),
    pytest.param(
        {"formdata": form("cpu", f"  {PANGEO}:2023.09.12\t")},
        (PANGEO, "pangeo/pangeo-notebook:2023.09.12"), None, (),
        id="form-whitespace-is-pinned-away",
    ),
    pytest.param(
        {"formdata": form("gpu", f"{PANGEO}:2023.09.11")},
        (PANGEO, "pangeo/pangeo-notebook:2023.09.11"), None, (),
        id="form-gpu-allowed",
    ),
    pytest.param(
        {"formdata": form("arm", "pangeo/pangeo-notebook:2023.09.10")},
        (PANGEO, "pangeo/pangeo-notebook:2023.09.10"), None, (),
        id="form-arm-template-quay-prefix",
    ),
    pytest.param(
        {"user_options": {"image--unlisted-choice": f"{PANGEO}:2023.09.12"}},
        (PANGEO, "pangeo/pangeo-notebook:2023.09.12"), None, (),
        id="rest-api-default-profile",
    ),
    pytest.param(
        {"user_options": {"profile": "gpu", "image--unlisted-choice": f"{PANGEO}:2023.09.10"}},
        (PANGEO, "pangeo/pangeo-notebook:2023.09.10"), None, (),
        id="rest-api-gpu-allowed",
    ),
    pytest.param(
        {"formdata": form("gpu", "quay.io/jupyter/base-notebook:2024-01-15")},
        None, 400, ("quay.io/jupyter/base-notebook:2024-01-15", "gpu profile"),
        id="form-gpu-policy-refuses",
    ),
    pytest.param(
        {"formdata": form("cpu", f"{PANGEO}:latest")},
        None, 400, (f"{PANGEO}:latest", "blocked by the rule quay.io/pangeo/*:latest"),
        id="form-denied-latest",
    ),
    pytest.param(
        {"formdata": form("cpu", f"{PANGEO}:2099.01.01")},
        None, 400, (f"{PANGEO}:2099.01.01", "2023.09.1"),
        id="form-missing-tag-names-closest",
    ),
    pytest.param(
        {"formdata": form("arm", "jupyter/base-notebook:2024-01-15")},
        None, 400, ("jupyter/base-notebook:2024-01-15", "linux/arm64"),
        id="form-arm-wrong-platform",
    ),
    pytest.param(
        {"formdata": form("cpu", "quay.io/private/secret:1")},
        None, 400, ("quay.io/private/secret:1",),
        id="form-not-allowed-private",
    ),
    pytest.param(
        {"formdata": form("cpu", "Quay.io/Pangeo/X")},
        None, 400, ("Quay.io/Pangeo/X", "lower-case"),
        id="form-invalid-reference",
    ),
    pytest.param(
        {"user_options": {"profile": "gpu", "image--unlisted-choice": "evil.example/miner:1"}},
        None, 400, ("evil.example/miner:1", "not in the list of allowed images"),
        id="rest-api-gpu-refused",
    ),
    pytest.param(
        {"user_options": {"profile": "cpu", "image--unlisted-choice": 12345}},
        None, 400, ("12345",),
        id="rest-api-non-string-value",
    ),
    pytest.param(
        {"user_options": {"profile": "cpu", "image--unlisted-choice": "q" * 10_000}},
        None, 400, ("q" * 100 + "…", "10000 characters"),
        id="rest-api-10kB-value",
    ),
    pytest.param(
        {"formdata": form("cpu", f"{PANGEO}:2023.09.11\r\nX-Evil: 1\x00")},
        None, 400, (f"{PANGEO}:2023.09.11\ufffd\ufffdX-Evil: 1\ufffd",),
        id="form-control-characters-shown-safely",
    ),
    pytest.param(
        {"user_options": {"profile": "nope", "image--unlisted-choice": f"{PANGEO}:2023.09.11"}},
        None, 400, ("No such profile: nope",),
        id="rest-api-unknown-profile",
    ),
]  # fmt: skip


@pytest.mark.parametrize("mode", ["in_process", "http"])
@pytest.mark.parametrize(("request_", "expected", "status", "in_message"), SPAWNS)
async def test_spawn(
    make_guard: Callable[..., ImageGuard],
    seeded_images: SeededImages,
    mode: str,
    request_: dict[str, Any],
    expected: tuple[str, str] | None,
    status: int | None,
    in_message: tuple[str, ...],
) -> None:
    c = Config()
    make_guard(mode, c)
    result = await outcome_of(make_spawner(c), **request_)
    if expected is not None:
        assert result == Outcome(image=pinned(seeded_images, *expected))
        assert "@sha256:" in (result.image or "")
        return
    assert result.status == status
    assert result.message is not None
    assert result.message.startswith("Cannot start a server")
    for part in in_message:
        assert part in result.message
    assert len(result.message) < 800


async def test_both_modes_give_the_same_pod_and_the_same_message(
    make_guard: Callable[..., ImageGuard],
) -> None:
    for param in SPAWNS:
        request_ = param.values[0]
        outcomes = []
        for mode in ("in_process", "http"):
            c = Config()
            make_guard(mode, c)
            outcomes.append(await outcome_of(make_spawner(c), **request_))
        assert outcomes[0] == outcomes[1], param.id


async def test_listed_choice_is_not_checked_or_changed(
    make_guard: Callable[..., ImageGuard], token_registry: RunningRegistry
) -> None:
    c = Config()
    make_guard("in_process", c)
    since = len(token_registry.request_log())
    result = await outcome_of(
        make_spawner(c), formdata={"profile": ["cpu"], "profile-option-cpu--image": ["base"]}
    )
    assert result == Outcome(image="quay.io/jupyter/base-notebook:2024-01-15")
    assert token_registry.request_log()[since:] == []


async def test_pinned_pod_keeps_the_profile_overrides(
    make_guard: Callable[..., ImageGuard], seeded_images: SeededImages
) -> None:
    c = Config()
    make_guard("http", c)
    pod = await spawn(make_spawner(c), formdata=form("gpu", f"{PANGEO}:2023.09.11"))
    notebook = next(c for c in pod.spec.containers if c.name == "notebook")
    assert notebook.image == f"{PANGEO}@{seeded_images['pangeo/pangeo-notebook:2023.09.11']}"
    assert notebook.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.node_selector == {"imagewarden.test/pool": "gpu"}


# --- when the checker cannot answer ---------------------------------------------------------


async def _silent_server() -> asyncio.Server:
    """Accepts connections and never answers: a hung service."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    return await asyncio.start_server(hold, "127.0.0.1", 0)


async def _bad_answer_service(answer: object, status: int = 200) -> TestServer:
    """A service answering every check with ``answer``: the hub must not trust it."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/api/v1/check", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(
    ("service", "in_message"),
    [
        pytest.param("closed-port", "could not be reached", id="connection-refused"),
        pytest.param("silent", "did not answer within 0.5 seconds", id="hangs"),
        pytest.param("wrong-token", "refused the hub's token (HTTP 401)", id="wrong-token"),
        pytest.param(
            {"allowed": True, "reason": "ok", "pinned": f"{PANGEO}:2023.09.11"},
            "pinned image without a digest",
            id="answer-pins-a-tag",
        ),
        pytest.param(["not", "a", "verdict"], "other than a JSON object", id="answer-array"),
        pytest.param({"allowed": "yes", "reason": "ok"}, "lacks 'allowed'", id="answer-types"),
    ],
)
async def test_service_unusable_refuses_by_default_and_says_so(
    hub_settings: Settings, service_url: str, service: object, in_message: str
) -> None:
    closers: list[Callable[[], Awaitable[None]]] = []
    if service == "closed-port":
        url, token = f"http://127.0.0.1:{free_port()}", TOKEN
    elif service == "silent":
        server = await _silent_server()
        url, token = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", TOKEN

        async def close_silent() -> None:
            server.close()
            await server.wait_closed()

        closers.append(close_silent)
    elif service == "wrong-token":
        url, token = service_url, "not-the-token"
    else:
        bad = await _bad_answer_service(service)
        url, token = str(bad.make_url("")).rstrip("/"), TOKEN
        closers.append(bad.close)
    c = Config()
    guard = configure(c, url=url, token=token, timeout_seconds=0.5)
    try:
        result = await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:2023.09.11"))
    finally:
        await guard.aclose()
        for close in closers:
            await close()
    assert result.status == 503
    assert result.message is not None
    assert "the image checker at http://127.0.0.1:" in result.message
    assert in_message in result.message
    assert "was not checked, so the server was not started" in result.message


async def test_service_unreachable_with_failure_mode_allow_spawns_the_typed_image() -> None:
    c = Config()
    guard = configure(c, url=f"http://127.0.0.1:{free_port()}", failure_mode="allow")
    try:
        result = await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:2023.09.11"))
    finally:
        await guard.aclose()
    assert result == Outcome(image=f"{PANGEO}:2023.09.11")


@pytest.mark.parametrize(
    ("failure_mode", "expected"),
    [
        pytest.param("refuse", Outcome(status=400), id="refuse"),
        pytest.param("allow", Outcome(image=f"{PANGEO}:2023.09.11"), id="allow"),
    ],
)
async def test_registry_unreachable_in_process_follows_the_checker_failure_mode(
    failure_mode: str, expected: Outcome
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    document = hub_settings_document(dead, dead)
    document["checker"] = {"failure_mode": failure_mode, "timeout_seconds": 2}
    c = Config()
    guard = configure(c, settings=parse_settings(document))
    try:
        result = await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:2023.09.11"))
    finally:
        await guard.aclose()
    assert (result.image, result.status) == (expected.image, expected.status)
    if expected.status:
        assert result.message is not None
        assert "could not be checked" in result.message


# --- composing with the admin's own hooks ---------------------------------------------------


@dataclass
class AdminHooks:
    """Hooks an admin had configured before imagewarden (one sync, one async)."""

    calls: list[str]

    def pre_spawn(self, spawner: Any) -> None:
        self.calls.append("admin pre_spawn")
        spawner.environment["ADMIN_HOOK"] = "ran"

    async def modify_pod(self, spawner: Any, pod: Any) -> Any:
        await asyncio.sleep(0)
        self.calls.append(f"admin modify_pod saw {notebook_image(pod)}")
        pod.metadata.labels["admin-hook"] = "ran"
        return pod


@pytest.mark.parametrize("section", ["Spawner", "KubeSpawner"])
async def test_admin_hooks_still_run_around_ours(
    make_guard: Callable[..., ImageGuard], seeded_images: SeededImages, section: str
) -> None:
    admin = AdminHooks([])
    c = Config()
    c[section].pre_spawn_hook = admin.pre_spawn
    c[section].modify_pod_hook = admin.modify_pod
    make_guard("in_process", c)
    spawner = make_spawner(c)
    pod = await spawn(spawner, formdata=form("cpu", f"{PANGEO}:2023.09.11"))
    pinned_image = f"{PANGEO}@{seeded_images['pangeo/pangeo-notebook:2023.09.11']}"
    assert notebook_image(pod) == pinned_image
    assert pod.metadata.labels["admin-hook"] == "ran"
    assert spawner.environment["ADMIN_HOOK"] == "ran"
    # Their modify_pod_hook shapes the pod first; our pin is applied to what they return.
    assert admin.calls == ["admin pre_spawn", f"admin modify_pod saw {PANGEO}:2023.09.11"]


async def test_refused_spawn_never_runs_the_admin_pre_spawn_hook(
    make_guard: Callable[..., ImageGuard],
) -> None:
    admin = AdminHooks([])
    c = Config()
    c.KubeSpawner.pre_spawn_hook = admin.pre_spawn
    make_guard("http", c)
    result = await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:latest"))
    assert result.status == 400
    assert admin.calls == []


async def test_configure_twice_replaces_instead_of_wrapping(
    make_guard: Callable[..., ImageGuard],
) -> None:
    admin = AdminHooks([])
    c = Config()
    c.KubeSpawner.pre_spawn_hook = admin.pre_spawn
    make_guard("in_process", c)
    second = make_guard("http", c)
    assert c.KubeSpawner.pre_spawn_hook._imagewarden_guard is second
    await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:2023.09.11"))
    assert admin.calls == ["admin pre_spawn"]


async def test_pre_spawn_hook_overwritten_later_still_checks_in_modify_pod_hook(
    make_guard: Callable[..., ImageGuard], seeded_images: SeededImages
) -> None:
    """An admin line after configure() replaced our pre_spawn_hook: the pod hook checks."""
    c = Config()
    make_guard("http", c)
    c.KubeSpawner.pre_spawn_hook = lambda spawner: None
    refused = await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:latest"))
    assert refused.status == 400
    allowed = await outcome_of(make_spawner(c), formdata=form("cpu", f"{PANGEO}:2023.09.11"))
    assert allowed.image == f"{PANGEO}@{seeded_images['pangeo/pangeo-notebook:2023.09.11']}"


async def test_callable_and_coroutine_profile_lists(
    make_guard: Callable[..., ImageGuard], seeded_images: SeededImages
) -> None:
    from kubespawner import KubeSpawner

    def sync_profiles(spawner: Any) -> list[dict[str, Any]]:
        return profile_list()

    async def async_profiles(spawner: Any) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return profile_list()

    as_dict = {profile["slug"]: profile for profile in profile_list()}
    for profiles in (sync_profiles, async_profiles, as_dict):
        c = Config()
        make_guard("in_process", c)
        spawner = KubeSpawner(_mock=True, config=c, profile_list=profiles)
        refused = await outcome_of(spawner, formdata=form("gpu", "quay.io/jupyter/x:1"))
        assert refused.status == 400, profiles
        spawner = KubeSpawner(_mock=True, config=c, profile_list=profiles)
        allowed = await outcome_of(
            spawner, formdata=form("arm", "pangeo/pangeo-notebook:2023.09.10")
        )
        assert allowed.image == f"{PANGEO}@{seeded_images['pangeo/pangeo-notebook:2023.09.10']}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"url": "ftp://x"}, "url: 'ftp://x' must be an http", id="bad-url"),
        pytest.param({"url": "http://x", "config_file": "/x"}, "not both", id="url-and-config"),
        pytest.param({"failure_mode": "maybe"}, "failure_mode: 'maybe'", id="bad-mode"),
        pytest.param({"timeout_seconds": 0}, "timeout_seconds: must be", id="zero-timeout"),
        pytest.param(
            {"url": "http://x", "token_file": "/nonexistent/token"},
            "token_file: cannot read",
            id="missing-token-file",
        ),
        pytest.param(
            {"config_file": "/nonexistent/config.yaml"}, "config", id="missing-config-file"
        ),
    ],
)
def test_configure_mistakes_fail_when_the_hub_starts(options: dict[str, Any], message: str) -> None:
    from imagewarden.errors import ConfigError

    c = Config()
    with pytest.raises(ConfigError) as caught:
        configure(c, **options)
    assert message in str(caught.value)
    assert "pre_spawn_hook" not in c.KubeSpawner


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        pytest.param(
            "ubuntu:22.04",
            Outcome(
                status=400,
                message="Cannot start a server: “ubuntu:22.04” is not accepted in the field "
                "'Image': Must be a quay.io image with a tag",
            ),
            id="regex-refuses",
        ),
        pytest.param(
            f"{PANGEO}:2023.09.11",
            Outcome(image=f"{PANGEO}@sha256:"),
            id="regex-passes-then-checked",
        ),
    ],
)
async def test_validation_regex_is_applied_as_kubespawner_would(
    make_guard: Callable[..., ImageGuard], typed: str, expected: Outcome
) -> None:
    """KubeSpawner would refuse a value failing validation_regex inside start() with an
    unhandled ValueError (a 500 page); the hook refuses it on the form instead."""
    from kubespawner import KubeSpawner

    profiles = profile_list()
    profiles[0]["profile_options"]["image"]["unlisted_choice"].update(
        validation_regex=r"^quay\.io/.+:.+$",
        validation_message="Must be a quay.io image with a tag",
    )
    c = Config()
    make_guard("in_process", c)
    result = await outcome_of(
        KubeSpawner(_mock=True, config=c, profile_list=profiles), formdata=form("cpu", typed)
    )
    if expected.image:
        assert (result.image or "").startswith(expected.image)
    else:
        assert result == expected
