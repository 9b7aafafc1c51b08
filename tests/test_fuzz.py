"""Hostile input, generated: parse, policy, config loading and the check API never crash.

The invariants, for any input hypothesis can make up:

- ``parse`` returns a :class:`~imagewarden.reference.Reference` or raises ``InvalidReference``;
  what it accepts is printable ASCII (no homoglyph, control or bidi character survives) and
  normalizes to a fixed point. (``tests/test_reference_properties.py`` covers the grammar's
  own properties; this file attacks it with hostile text.)
- ``Checker.check`` (offline) answers every string with a verdict whose reason is a bounded,
  single-line sentence, and never raises.
- ``compile_rule`` raises only ``PolicyPatternError``; a policy decision never raises, and an
  allowed name sends the client to exactly the endpoint configured for the rule's host (the
  Docker Hub aliases and upper-case hosts included): no spelling reaches another endpoint.
- ``parse_settings`` on nested garbage (and ``load_config`` on garbage files) raises only
  ``ConfigError``, whose message is bounded.
- ``POST /api/v1/check`` answers only 200, 400 or 413, always with JSON.

Budget: the ``imagewarden-fuzz-ci`` profile (a few hundred examples per test, derandomized so CI
is repeatable); ``IMAGEWARDEN_FUZZ=long`` selects ``imagewarden-fuzz-long`` (tens of thousands of
examples, random, with the example database), which ``scripts/fuzz-long.sh`` runs.

``python3 -m tests.test_fuzz`` runs the same invariants under atheris (coverage-guided, when it
is installed) for as long as you like; ``scripts/fuzz-long.sh`` does that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import string
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagewarden.checker import MAX_IMAGE_CHARS, Checker
from imagewarden.config import Settings, load_config, parse_settings
from imagewarden.errors import ConfigError, InvalidReference, PolicyPatternError
from imagewarden.policy import Policy, compile_rule
from imagewarden.reference import Reference, canonical_host, parse
from imagewarden.registry.hosts import endpoint_for
from imagewarden.service import create_app
from tests.support.registry import RunningRegistry

settings.register_profile(
    "imagewarden-fuzz-ci",
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "imagewarden-fuzz-long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LONG = os.environ.get("IMAGEWARDEN_FUZZ") == "long"
FUZZ = settings.get_profile("imagewarden-fuzz-long" if LONG else "imagewarden-fuzz-ci")


def budget(ci_examples: int) -> settings:
    """The profile, with this test's share of the CI budget (the long profile is unchanged)."""
    return FUZZ if LONG else settings(FUZZ, max_examples=ci_examples)


MAX_REASON_CHARS = 1200
"""A reason is a sentence for a person; even quoting a hostile value it stays short."""
MAX_CONFIG_ERROR_CHARS = 1000


# --- hostile text ------------------------------------------------------------------------------

HOSTILE_FRAGMENTS = [
    "quay.io",
    "QUAY.IO",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "localhost",
    "127.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "169.254.169.254",
    "metadata.google.internal",
    "/",
    "//",
    ":",
    "::",
    "@",
    "@sha256:",
    "sha256:" + "a" * 64,
    "sha512:" + "b" * 128,
    ":latest",
    "..",
    ".",
    "%2f",
    "%00",
    "%40",
    "\\",
    "\x00",
    "\r\n",
    "\t",
    " ",
    "\u200b",
    "\u202e",
    "\ufeff",
    "\u0430",
    "\uff55",
    "\u0301",
    "\ud800",
    "\U0001f600",
    "*",
    "**",
    "?",
    "#",
    "$(id)",
    "`id`",
    "'",
    '"',
    "{value}",
    "user:pass@",
    "http://",
    "https://",
    "a" * 128,
    "a" * 300,
    "A",
    "-",
    "_",
    "__",
    "---",
    "0x7f",
    "2130706433",
]
hostile_text = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(HOSTILE_FRAGMENTS) | st.text(max_size=4), max_size=12).map("".join),
    st.text(alphabet=string.printable, min_size=200, max_size=1500),
)


def _single_line_bounded(text: str, limit: int) -> bool:
    return isinstance(text, str) and 0 < len(text) <= limit and "\n" not in text


@budget(300)
@given(hostile_text)
@example("ubuntu")
@example("quay.io/pangeo/pangeo-notebook:2023.09.11")
@example("\ud800")
@example("a" * (MAX_IMAGE_CHARS + 1))
def test_parse_accepts_only_printable_ascii_or_raises_invalid_reference(text: str) -> None:
    refusal: str | None = None
    try:
        ref = parse(text)
    except InvalidReference as error:
        refusal = str(error)
    if refusal is not None:
        assert _single_line_bounded(refusal, MAX_REASON_CHARS), refusal
        return
    assert isinstance(ref, Reference)
    normalized = str(ref)
    assert normalized.isascii()
    assert normalized.isprintable()
    assert not any(character.isspace() for character in normalized)
    assert parse(normalized) == ref


_OFFLINE = Checker(parse_settings({"policy": {"allow": ["quay.io/pangeo/*"]}}))


@budget(200)
@given(hostile_text)
async def test_offline_checker_answers_every_string_with_a_short_reason(text: str) -> None:
    verdict = await _OFFLINE.check(text)
    assert _single_line_bounded(verdict.reason, MAX_REASON_CHARS), verdict.reason
    assert verdict.code in {"ok", "policy", "invalid_reference"}
    if verdict.allowed:
        assert verdict.reference is not None
        assert verdict.reference.startswith("quay.io/pangeo/")
        assert verdict.reference.count("/") == 2


# --- policy ------------------------------------------------------------------------------------

_RULE_HOSTS = [
    "quay.io",
    "QUAY.IO",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "ghcr.io",
    "localhost",
    "localhost:5000",
    "127.0.0.1:5000",
    "[::1]:5000",
    "gcr.io",
    "example.com",
]
_GLOB_PIECES = ["*", "**", "a", "b", "library", "pangeo", "x-y", "x_y", "x.y", "/", "***"]
rule_text = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda host, pieces, tag: host + "/" + "".join(pieces) + tag,
        st.sampled_from(_RULE_HOSTS),
        st.lists(st.sampled_from(_GLOB_PIECES), min_size=1, max_size=8),
        st.sampled_from(["", ":*", ":latest", ":2023*", ":", ":A*b", ":" + "t" * 130]),
    ),
)
reference_text = st.builds(
    lambda host, path, tail: (host + "/" if host else "") + path + tail,
    st.sampled_from(["", *_RULE_HOSTS, "Docker.IO", "LOCALHOST:5000", "[0:0::1]:5000"]),
    st.lists(
        st.sampled_from(["a", "b", "library", "pangeo", "x-y", "ubuntu"]), min_size=1, max_size=4
    ).map("/".join),
    st.sampled_from(["", ":latest", ":1", ":2023.09", "@sha256:" + "c" * 64]),
)


@budget(300)
@given(rule_text)
def test_compile_rule_raises_only_policy_pattern_errors(pattern: str) -> None:
    try:
        rule = compile_rule(pattern)
    except PolicyPatternError as error:
        # Bounded, but not necessarily one line: config.py refuses control characters in
        # rules before they get here, so only direct API callers can put a newline in one.
        message = str(error)
    else:
        assert rule.host == canonical_host(rule.host)
        return
    assert 0 < len(message) <= MAX_REASON_CHARS, message


@budget(200)
@given(st.lists(rule_text, max_size=5), st.lists(rule_text, max_size=3), reference_text)
def test_an_allowed_name_reaches_only_the_endpoint_of_the_rule_that_allowed_it(
    allow: list[str], deny: list[str], image: str
) -> None:
    def compiles(pattern: str) -> bool:
        try:
            compile_rule(pattern)
        except PolicyPatternError:
            return False
        return True

    allow, deny = [p for p in allow if compiles(p)], [p for p in deny if compiles(p)]
    try:
        ref = parse(image)
    except InvalidReference:
        return
    policy = Policy.from_patterns(allow, deny)
    started = time.monotonic()
    decision = policy.decide(ref)
    assert time.monotonic() - started < 1.0  # no catastrophic backtracking in globs
    assert _single_line_bounded(decision.reason, MAX_REASON_CHARS)
    if not decision.allowed:
        return
    rule = compile_rule(decision.rule or "")
    assert canonical_host(ref.domain) == rule.host
    # Every rule host has its own endpoint; the client must go to the allowing rule's one.
    registries = {
        compile_rule(p).host: _endpoint_settings(f"http://10.0.0.{n}:5000")
        for n, p in enumerate(allow + deny)
    }
    assert endpoint_for(ref.domain, registries) == endpoint_for(rule.host, registries)
    assert not any(compile_rule(p).matches(ref) for p in deny)


def _endpoint_settings(url: str) -> Any:
    from imagewarden.config import RegistrySettings

    return RegistrySettings(endpoint=url)


# --- configuration -----------------------------------------------------------------------------

CONFIG_KEYS = [
    "registries",
    "credentials",
    "policy",
    "profiles",
    "checker",
    "service",
    "prepull",
    "endpoint",
    "username",
    "password_file",
    "docker_config",
    "dockerconfigjson_files",
    "allow",
    "deny",
    "mode",
    "platform",
    "timeout_seconds",
    "failure_mode",
    "tag_ttl_seconds",
    "miss_ttl_seconds",
    "stale_if_error_seconds",
    "cache_entries",
    "host",
    "port",
    "token_file",
    "max_body_bytes",
    "max_concurrent_checks",
    "namespace",
    "pools",
    "noop_image",
    "priority_class_name",
    "image_pull_secrets",
    "profile_list",
    "images",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "nodeAffinity",
    "key",
    "operator",
    "value",
    "effect",
    "tolerationSeconds",
    "kubespawner_override",
    "profile_options",
    "choices",
    "unlisted_choice",
    "validation_regex",
    "display_name",
    "slug",
    "default",
    "image",
    "node_selector",
    "node_affinity_required",
    "quay.io",
    "docker.io",
    "gpu",
    "cpu",
]
CONFIG_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "quay.io/pangeo/*",
            "docker.io/**",
            "http://127.0.0.1:5000",
            "https://",
            "ftp://x",
            "http://user:pw@h",
            "refuse",
            "allow",
            "extend",
            "replace",
            "linux/amd64",
            "linux",
            "(a+)+$",
            "[",
            "{value}",
            "Exists",
            "Equal",
            "NoSchedule",
            "ubuntu:22.04",
            "-1",
            "\x00",
            "a" * 5000,
        ]
    ),
    st.sampled_from(CONFIG_KEYS),
    st.binary(max_size=8),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 1, 1)),
    st.dates(),
)
CONFIG_KEY = st.one_of(
    st.sampled_from(CONFIG_KEYS), st.text(max_size=8), st.integers(), st.none(), st.booleans()
)
config_garbage = st.recursive(
    CONFIG_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(CONFIG_KEY, children, max_size=5)
    ),
    max_leaves=40,
)


def _sometimes_garbage(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, config_garbage)


def _options(**optional: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=optional)


_IMAGES = st.lists(st.sampled_from(["quay.io/pangeo/x:1", "ubuntu:22.04", "bad image"]))
_POOL = _options(
    images=_IMAGES,
    nodeSelector=st.dictionaries(st.sampled_from(["gpu", "pool"]), st.text(max_size=6)),
    tolerations=st.lists(
        st.fixed_dictionaries(
            {"key": st.text(max_size=5)},
            optional={"operator": st.sampled_from(["Exists", "Equal", "Bad"])},
        ),
        max_size=2,
    ),
    platform=st.sampled_from(["linux/amd64", "linux/arm64", "x"]),
)
_OVERRIDE = _options(
    image=st.sampled_from(["quay.io/pangeo/x:1", "x y", "{value}", "quay.io/x/{value}"]),
    node_selector=st.dictionaries(st.just("pool"), st.text(max_size=5)),
)
_PROFILE_OPTION = st.fixed_dictionaries(
    {
        "choices": st.dictionaries(
            st.sampled_from(["a", "b"]),
            st.fixed_dictionaries({"kubespawner_override": _OVERRIDE}),
            max_size=2,
        )
    },
    optional={
        "unlisted_choice": _options(
            enabled=st.booleans(),
            validation_regex=st.sampled_from(["^quay\\.io/.*$", "(", "(a+)+$", ""]),
            kubespawner_override=_OVERRIDE,
        )
    },
)
_PROFILE = st.fixed_dictionaries(
    {"display_name": st.text(max_size=8)},
    optional={
        "slug": st.text(max_size=8),
        "kubespawner_override": _OVERRIDE,
        "profile_options": st.dictionaries(
            st.sampled_from(["image", "size"]), _PROFILE_OPTION, max_size=2
        ),
    },
)
almost_valid_configs = _options(
    registries=_sometimes_garbage(
        st.dictionaries(
            st.sampled_from(["quay.io", "QUAY.IO", "docker.io", "index.docker.io", "a:b"]),
            _options(
                endpoint=st.sampled_from(["http://127.0.0.1:5000", "https://x.y/", "x"]),
                username=st.text(max_size=5),
                password_file=st.text(max_size=5),
            ),
            max_size=3,
        )
    ),
    policy=_sometimes_garbage(
        _options(allow=st.lists(rule_text, max_size=3), deny=st.lists(rule_text, max_size=3))
    ),
    profiles=_sometimes_garbage(
        st.dictionaries(
            st.text(max_size=6),
            _options(
                platform=st.sampled_from(["linux/arm64", "linux/arm/v7", "arm"]),
                policy=_options(
                    allow=st.lists(rule_text, max_size=2),
                    mode=st.sampled_from(["extend", "replace", "merge"]),
                ),
            ),
            max_size=2,
        )
    ),
    checker=_sometimes_garbage(
        _options(
            timeout_seconds=st.floats(-1, 400),
            failure_mode=st.sampled_from(["refuse", "allow", "ignore"]),
            cache_entries=st.integers(-5, 10**8),
        )
    ),
    service=_sometimes_garbage(
        _options(
            port=st.integers(-1, 70000),
            max_body_bytes=st.integers(0, 2 * 1024 * 1024),
            host=st.text(max_size=10),
        )
    ),
    prepull=_sometimes_garbage(
        _options(
            namespace=st.sampled_from(["jhub", "Bad_NS", ""]),
            pools=st.dictionaries(st.sampled_from(["cpu", "gpu", "Bad Name"]), _POOL, max_size=3),
            profile_list=st.lists(_PROFILE, max_size=3),
        )
    ),
)
"""A document of the right shape whose values are sometimes right, sometimes garbage."""


def _deeply_nested(depth: int) -> Any:
    nested: Any = []
    for _ in range(depth):
        nested = [nested]
    return nested


def _assert_settings_or_config_error(load: Callable[[], Settings]) -> None:
    try:
        result = load()
    except ConfigError as error:
        message = str(error)
    else:
        assert isinstance(result, Settings)
        return
    # Bounded; YAML syntax errors span lines on purpose (the line, then a caret under it).
    assert 0 < len(message) <= MAX_CONFIG_ERROR_CHARS, message[:2000]


@budget(150)
@given(config_garbage | almost_valid_configs)
@example({"registries": {"quay.io": {"endpoint": "http://[::1"}}})
def test_parse_settings_raises_only_config_errors(document: Any) -> None:
    _assert_settings_or_config_error(lambda: parse_settings(document))


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"policy": {"allow": _deeply_nested(3000)}}, id="policy-allow"),
        pytest.param({"prepull": {"pools": {"a": {"images": _deeply_nested(3000)}}}}, id="pool"),
        pytest.param({"checker": _deeply_nested(3000)}, id="checker"),
        pytest.param({"profiles": {"p": {"policy": {"deny": _deeply_nested(3000)}}}}, id="deny"),
    ],
)
def test_parse_settings_on_3000_levels_of_nesting(document: Any) -> None:
    # Not hypothesis examples: hypothesis' own printer recurses on values this deep.
    _assert_settings_or_config_error(lambda: parse_settings(document))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config") / "imagewarden.yaml"


YAML_FRAGMENTS = [
    "policy:",
    "\n  allow:",
    " [",
    "]",
    "{",
    "}",
    "- ",
    "&a ",
    "*a ",
    "!!python/object:os.system",
    "!!binary ",
    "? ",
    ": ",
    "'",
    '"',
    "\t",
    "\n",
    "---",
    "...",
    "%YAML 1.1\n",
    "~",
    "0x1F",
    "1e999",
    ".inf",
    "registries:",
    "checker:",
    "timeout_seconds: ",
    "<<: ",
    "\ufeff",
    "\x00",
    "\xff",
]


@budget(150)
@given(
    st.one_of(
        st.lists(st.sampled_from(YAML_FRAGMENTS) | st.text(max_size=5), max_size=30).map(
            lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
        ),
        st.binary(max_size=200),
    )
)
@example(b"[" * 5000 + b"]" * 5000)
@example(
    b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    b"policy: {allow: [*d, *d, *d, *d, *d, *d, *d, *d, *d]}\n"
)
def test_load_config_raises_only_config_errors(config_file: Path, raw: bytes) -> None:
    config_file.write_bytes(raw)
    _assert_settings_or_config_error(lambda: load_config(config_file))


# --- the check API -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def api(open_registry: RunningRegistry) -> AsyncIterator[TestClient[Any, Any]]:
    settings = parse_settings(
        {
            "registries": {"quay.io": {"endpoint": open_registry.url}},
            "policy": {"allow": ["quay.io/fuzz/*"]},
            "profiles": {"gpu": {"platform": "linux/arm64"}},
            "checker": {"timeout_seconds": 3},
            "service": {"max_body_bytes": 4096},
        }
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
check_bodies = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=4000, max_size=6000),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"image": hostile_text | st.builds("quay.io/fuzz/{}".format, hostile_text)},
        optional={
            "profile": st.none() | st.text(max_size=300) | st.sampled_from(["gpu"]) | json_values
        },
    ).map(lambda body: json.dumps(body).encode()),
    st.fixed_dictionaries({"image": json_values}).map(lambda body: json.dumps(body).encode()),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'{"image": "\\ud800"}',
            b'{"image": 1e999}',
            b'{"image": "ubuntu", "image": "quay.io/fuzz/x"}',
            b"\xff\xfe{}",
        ]
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "",
    ]
)


@budget(150)
@given(body=check_bodies, content_type=CONTENT_TYPES)
async def test_check_api_answers_only_200_400_or_413(
    api: TestClient[Any, Any], body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with api.post("/api/v1/check", data=body, headers=headers) as response:
        status = response.status
        answer = await response.json(content_type=None)
    assert status in (200, 400, 413), (status, body[:200])
    assert isinstance(answer, dict)
    if status != 200:
        assert _single_line_bounded(answer["error"], MAX_REASON_CHARS)
        return
    assert isinstance(answer["allowed"], bool)
    assert _single_line_bounded(answer["reason"], MAX_REASON_CHARS)
    if answer["allowed"]:
        assert answer["reference"].startswith("quay.io/fuzz/")


async def test_check_api_refuses_an_oversized_chunked_body(api: TestClient[Any, Any]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"image": "'
        for _ in range(64):
            yield b"a" * 1024
        yield b'"}'

    async with api.post("/api/v1/check", data=chunks()) as response:
        assert response.status == 413
        assert "larger than 4096 bytes" in (await response.json())["error"]


# --- atheris (optional, on demand) ---------------------------------------------------------------


def _atheris_one_input(data: bytes) -> None:
    """Every invariant above that needs no server, driven by atheris' bytes."""
    import atheris

    provider = atheris.FuzzedDataProvider(data)
    text = provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 300))
    try:
        ref = parse(text)
    except InvalidReference:
        ref = None
    if ref is not None:
        assert parse(str(ref)) == ref
        assert str(ref).isascii()
    verdict = asyncio.run(_OFFLINE.check(text))
    assert _single_line_bounded(verdict.reason, MAX_REASON_CHARS)
    with contextlib.suppress(PolicyPatternError):
        compile_rule(text)
    try:
        document = json.loads(provider.ConsumeUnicodeNoSurrogates(2000))
    except ValueError:
        document = {"policy": {"allow": [text]}}
    _assert_settings_or_config_error(lambda: parse_settings(document))


def main() -> None:
    """``python3 -m tests.test_fuzz [libFuzzer flags]``: coverage-guided fuzzing with atheris."""
    import atheris

    atheris.instrument_all()  # the imagewarden modules are imported already
    atheris.Setup(sys.argv, _atheris_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
