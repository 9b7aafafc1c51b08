"""Tables for the allowlist policy (imagewarden.policy): globs, deny-wins, spellings, profiles.

Every image here goes through the real grammar (:func:`imagewarden.reference.parse`), as in the
checker, so the tables also prove that no spelling of a name reaches a different decision.
"""

from __future__ import annotations

import re

import pytest

from imagewarden.errors import InvalidReference, PolicyPatternError
from imagewarden.policy import Decision, Policy, PolicyMode, PolicySet, ProfilePolicy, compile_rule
from imagewarden.reference import parse

DIGEST = "sha256:" + "0123456789abcdef" * 4


def assert_sentence(message: str) -> None:
    """A refusal or verdict is one complete sentence: a capital, an image name or a quoted
    value first, a full stop or question mark last."""
    assert message == message.strip(), message
    assert re.match(r"[A-Z'\"]|[a-z0-9.:\[\]-]+/", message), f"does not start a sentence: {message}"
    assert message.endswith((".", "?")), f"does not end a sentence: {message}"


def decide(allow: list[str], deny: list[str], image: str) -> Decision:
    return Policy.from_patterns(allow, deny).decide(parse(image))


# --- rules: allow/deny, globs, tags --------------------------------------------------------

DECISIONS = [
    # allow: allow rules; deny: deny rules; image: typed by the user;
    # allowed: expected verdict; rule: the pattern expected to decide (None: nothing matched)
    pytest.param(["quay.io/pangeo/*"], [], "quay.io/pangeo/pangeo-notebook:2023.09.11", True,
                 "quay.io/pangeo/*", id="host-exact"),
    pytest.param(["QUAY.IO/pangeo/*"], [], "quay.io/pangeo/x", True, "QUAY.IO/pangeo/*",
                 id="rule-host-upper-case"),
    pytest.param(["quay.io/pangeo/*"], [], "QUAY.IO/pangeo/x", True, "quay.io/pangeo/*",
                 id="image-host-upper-case"),
    pytest.param(["quay.io/pangeo/*"], [], "quay.io.evil.example/pangeo/x", False, None,
                 id="host-suffix-is-another-host"),
    pytest.param(["quay.io/pangeo/*"], [], "evilquay.io/pangeo/x", False, None,
                 id="host-prefix-is-another-host"),
    pytest.param(["quay.io/pangeo/*"], [], "quay.io:443/pangeo/x", False, None,
                 id="host-with-port-is-another-host"),
    pytest.param(["127.0.0.1:5000/**"], [], "127.0.0.1:5000/team/x:1", True,
                 "127.0.0.1:5000/**", id="host-port"),
    pytest.param(["127.0.0.1:5000/**"], [], "127.0.0.1:5001/team/x:1", False, None,
                 id="host-other-port"),
    pytest.param(["[::1]:5000/**"], [], "[::1]:5000/x", True, "[::1]:5000/**", id="host-ipv6"),
    pytest.param(["localhost/**"], [], "localhost/x", True, "localhost/**", id="host-localhost"),
    pytest.param(["quay.io/pangeo/*"], [], "quay.io/pangeo/a/b", False, None,
                 id="star-stays-in-one-segment"),
    pytest.param(["quay.io/pangeo/base-*"], [], "quay.io/pangeo/base-notebook", True,
                 "quay.io/pangeo/base-*", id="star-inside-segment"),
    pytest.param(["quay.io/pangeo/base-*"], [], "quay.io/pangeo/pangeo-notebook", False, None,
                 id="star-inside-segment-other-name"),
    pytest.param(["quay.io/*/notebook"], [], "quay.io/org/notebook", True, "quay.io/*/notebook",
                 id="star-in-middle"),
    pytest.param(["quay.io/*/notebook"], [], "quay.io/a/b/notebook", False, None,
                 id="star-in-middle-not-two-segments"),
    pytest.param(["quay.io/pangeo/**"], [], "quay.io/pangeo/a/b/c", True, "quay.io/pangeo/**",
                 id="double-star-across"),
    pytest.param(["quay.io/**/notebook"], [], "quay.io/a/b/notebook", True,
                 "quay.io/**/notebook", id="double-star-in-middle"),
    pytest.param(["quay.io/**"], [], "quay.io/x", True, "quay.io/**", id="double-star-host-wide"),
    pytest.param(["quay.io/pangeo/**"], [], "quay.io/pangeo", False, None,
                 id="double-star-needs-a-segment"),
    # No prefix matching, ever.
    pytest.param(["quay.io/pangeo/*"], [], "quay.io/pangeonot/x", False, None,
                 id="no-prefix-bypass-star"),
    pytest.param(["quay.io/pangeo/**"], [], "quay.io/pangeonot/x", False, None,
                 id="no-prefix-bypass-double-star"),
    pytest.param(["quay.io/pangeo"], [], "quay.io/pangeo-evil/x", False, None,
                 id="no-prefix-bypass-literal"),
    pytest.param(["quay.io/pangeo"], [], "quay.io/pangeo/x", False, None,
                 id="literal-is-not-a-directory"),
    pytest.param(["quay.io/pangeo"], [], "quay.io/pangeo:1", True, "quay.io/pangeo",
                 id="literal-exact"),
    pytest.param(["quay.io/pangeo/x"], [], "quay.io/pangeo/x2", False, None,
                 id="literal-no-prefix"),
    # Docker Hub: rules and images are normalized alike.
    pytest.param(["docker.io/library/*"], [], "ubuntu:22.04", True, "docker.io/library/*",
                 id="hub-official"),
    pytest.param(["docker.io/ubuntu"], [], "ubuntu", True, "docker.io/ubuntu",
                 id="hub-short-rule"),
    pytest.param(["index.docker.io/library/ubuntu"], [], "docker.io/ubuntu", True,
                 "index.docker.io/library/ubuntu", id="hub-legacy-host-rule"),
    pytest.param(["docker.io/*"], [], "jupyter/base-notebook", False, None,
                 id="hub-star-means-official-only"),
    pytest.param(["docker.io/jupyter/*"], [], "jupyter/base-notebook", True,
                 "docker.io/jupyter/*", id="hub-org"),
    # Tags.
    pytest.param(["quay.io/pangeo/*:2023.*"], [], "quay.io/pangeo/x:2023.09.11", True,
                 "quay.io/pangeo/*:2023.*", id="tag-glob-match"),
    pytest.param(["quay.io/pangeo/*:2023.*"], [], "quay.io/pangeo/x:2024.01.01", False, None,
                 id="tag-glob-other-tag"),
    pytest.param(["quay.io/pangeo/*:2023.*"], [], "quay.io/pangeo/x", False, None,
                 id="tag-glob-implied-latest"),
    pytest.param(["quay.io/pangeo/*:latest"], [], "quay.io/pangeo/x", True,
                 "quay.io/pangeo/*:latest", id="tag-rule-sees-implied-latest"),
    pytest.param(["quay.io/pangeo/*:2023.*"], [], f"quay.io/pangeo/x@{DIGEST}", False, None,
                 id="tag-glob-digest-only-has-no-tag"),
    pytest.param(["quay.io/pangeo/*:2023.*"], [], f"quay.io/pangeo/x:2023.1@{DIGEST}", True,
                 "quay.io/pangeo/*:2023.*", id="tag-glob-tag-and-digest"),
    pytest.param(["quay.io/x/*:v*"], [], "quay.io/x/y:V1", False, None,
                 id="tag-glob-case-sensitive"),
    pytest.param(["quay.io/x/*:*-gpu"], [], "quay.io/x/y:2023-gpu", True, "quay.io/x/*:*-gpu",
                 id="tag-glob-leading-star"),
    # Deny wins; default refuse.
    pytest.param(["quay.io/**"], ["quay.io/evil/**"], "quay.io/evil/x", False,
                 "quay.io/evil/**", id="deny-wins"),
    pytest.param(["quay.io/evil/x"], ["quay.io/**"], "quay.io/evil/x", False, "quay.io/**",
                 id="deny-wins-over-exact-allow"),
    pytest.param(["quay.io/**"], ["quay.io/evil/**"], "quay.io/good/x", True, "quay.io/**",
                 id="deny-only-its-names"),
    pytest.param(["quay.io/pangeo/*"], ["quay.io/pangeo/*:latest"], "quay.io/pangeo/x", False,
                 "quay.io/pangeo/*:latest", id="deny-latest-catches-implied-latest"),
    pytest.param(["quay.io/pangeo/*"], ["quay.io/pangeo/*:latest"], "quay.io/pangeo/x:latest",
                 False, "quay.io/pangeo/*:latest", id="deny-latest-explicit"),
    pytest.param(["quay.io/pangeo/*"], ["quay.io/pangeo/*:latest"], "quay.io/pangeo/x:2023",
                 True, "quay.io/pangeo/*", id="deny-latest-other-tag"),
    pytest.param(["quay.io/pangeo/*"], ["quay.io/pangeo/*:latest"],
                 f"quay.io/pangeo/x@{DIGEST}", True, "quay.io/pangeo/*",
                 id="deny-latest-spares-digest-only"),
    pytest.param(["quay.io/pangeo/*"], ["quay.io/pangeo/*:latest"],
                 f"quay.io/pangeo/x:latest@{DIGEST}", False, "quay.io/pangeo/*:latest",
                 id="deny-latest-tag-with-digest"),
    pytest.param(["docker.io/**"], ["docker.io/*:latest"], "ubuntu", False,
                 "docker.io/*:latest", id="deny-hub-latest-implied"),
    pytest.param(["quay.io/pangeo/*"], [], "ghcr.io/pangeo/x", False, None,
                 id="default-refuse-other-host"),
    pytest.param([], [], "quay.io/pangeo/x", False, None, id="empty-allow-refuses-all"),
]  # fmt: skip


@pytest.mark.parametrize(("allow", "deny", "image", "allowed", "rule"), DECISIONS)
def test_decision(
    allow: list[str], deny: list[str], image: str, allowed: bool, rule: str | None
) -> None:
    decision = decide(allow, deny, image)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert_sentence(decision.reason)
    assert str(parse(image)) in decision.reason


# --- every spelling of a name gets the same decision -------------------------------------

SPELLINGS = {
    "ubuntu": [
        "ubuntu",
        "ubuntu:latest",
        "docker.io/ubuntu",
        "docker.io/library/ubuntu",
        "index.docker.io/ubuntu",
        "index.docker.io/library/ubuntu",
        "registry-1.docker.io/library/ubuntu",
        "Docker.IO/ubuntu",
        "DOCKER.IO/library/ubuntu",
        "INDEX.DOCKER.IO/ubuntu",
    ],
    "jupyter": [
        "jupyter/base-notebook",
        "docker.io/jupyter/base-notebook",
        "index.docker.io/jupyter/base-notebook",
        "Docker.io/jupyter/base-notebook",
        "registry-1.docker.io/jupyter/base-notebook",
    ],
    "pangeo": [
        "quay.io/pangeo/x",
        "QUAY.IO/pangeo/x",
        "Quay.Io/pangeo/x",
        "quay.io/pangeo/x:latest",
    ],
}

SPELLING_POLICIES = [
    # allow, deny, expected verdict for each group of spellings
    pytest.param(["docker.io/library/*"], [], {"ubuntu": True, "jupyter": False, "pangeo": False},
                 id="hub-official-only"),
    pytest.param(["docker.io/**", "quay.io/**"], ["docker.io/library/ubuntu"],
                 {"ubuntu": False, "jupyter": True, "pangeo": True}, id="deny-one-hub-image"),
    pytest.param(["docker.io/**", "quay.io/**"], ["docker.io/ubuntu", "QUAY.IO/pangeo/x"],
                 {"ubuntu": False, "jupyter": True, "pangeo": False}, id="deny-short-spellings"),
    pytest.param(["docker.io/**"], ["index.docker.io/jupyter/*"],
                 {"ubuntu": True, "jupyter": False, "pangeo": False}, id="deny-legacy-host"),
    pytest.param(["docker.io/**", "quay.io/**"], ["docker.io/**:latest", "quay.io/**:latest"],
                 {"ubuntu": False, "jupyter": False, "pangeo": False}, id="deny-implied-latest"),
    pytest.param(["quay.io/pangeo/*"], [], {"ubuntu": False, "jupyter": False, "pangeo": True},
                 id="quay-only"),
]  # fmt: skip


@pytest.mark.parametrize(("allow", "deny", "expected"), SPELLING_POLICIES)
@pytest.mark.parametrize("group", sorted(SPELLINGS))
def test_every_spelling_same_decision(
    allow: list[str], deny: list[str], expected: dict[str, bool], group: str
) -> None:
    decisions = {image: decide(allow, deny, image) for image in SPELLINGS[group]}
    outcomes = {image: (d.allowed, d.rule) for image, d in decisions.items()}
    assert len(set(outcomes.values())) == 1, outcomes
    assert next(iter(outcomes.values()))[0] is expected[group], outcomes


# --- profiles --------------------------------------------------------------------------------

PROFILES = {
    "gpu": ProfilePolicy(allow=("quay.io/nvidia/*",)),
    "no-big": ProfilePolicy(deny=("quay.io/pangeo/big-*",)),
    "narrow": ProfilePolicy(allow=("quay.io/pangeo/pangeo-notebook:2023.*",),
                            mode=PolicyMode.REPLACE),
    "locked": ProfilePolicy(mode=PolicyMode.REPLACE),
}  # fmt: skip


def profile_set() -> PolicySet:
    return PolicySet.build(["quay.io/pangeo/*"], ["quay.io/pangeo/*:latest"], PROFILES)


PROFILE_DECISIONS = [
    # profile: slug or None; image; allowed; rule expected to decide
    pytest.param(None, "quay.io/pangeo/x:1", True, "quay.io/pangeo/*", id="global-allows"),
    pytest.param(None, "quay.io/nvidia/cuda:12", False, None, id="global-refuses-gpu-image"),
    pytest.param("gpu", "quay.io/nvidia/cuda:12", True, "quay.io/nvidia/*",
                 id="extend-adds-allow"),
    pytest.param("gpu", "quay.io/pangeo/x:1", True, "quay.io/pangeo/*",
                 id="extend-keeps-global-allow"),
    pytest.param("gpu", "quay.io/pangeo/x:latest", False, "quay.io/pangeo/*:latest",
                 id="extend-keeps-global-deny"),
    pytest.param("no-big", "quay.io/pangeo/big-x:1", False, "quay.io/pangeo/big-*",
                 id="extend-adds-deny"),
    pytest.param("no-big", "quay.io/pangeo/small:1", True, "quay.io/pangeo/*",
                 id="extend-deny-only-its-names"),
    pytest.param("narrow", "quay.io/pangeo/x:1", False, None, id="replace-narrows"),
    pytest.param("narrow", "quay.io/pangeo/pangeo-notebook:2023.09.11", True,
                 "quay.io/pangeo/pangeo-notebook:2023.*", id="replace-own-allow"),
    pytest.param("narrow", "quay.io/pangeo/pangeo-notebook:latest", False, None,
                 id="replace-drops-global-rules"),
    pytest.param("locked", "quay.io/pangeo/x:1", False, None, id="replace-with-nothing"),
    pytest.param("unknown", "quay.io/pangeo/x:1", True, "quay.io/pangeo/*",
                 id="unknown-profile-uses-global-allow"),
    pytest.param("unknown", "quay.io/nvidia/cuda:12", False, None,
                 id="unknown-profile-uses-global-refuse"),
]  # fmt: skip


@pytest.mark.parametrize(("profile", "image", "allowed", "rule"), PROFILE_DECISIONS)
def test_profile_decision(profile: str | None, image: str, allowed: bool, rule: str | None) -> None:
    decision = profile_set().decide(parse(image), profile=profile)
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert_sentence(decision.reason)
    if profile:
        assert f"{profile} profile" in decision.reason


# --- the reason sentence ---------------------------------------------------------------------

SEVEN_RULES = [f"quay.io/team{n}/*" for n in range(1, 8)]

REASONS = [
    # allow, deny, profile, image, fragments the reason must contain, fragments it must not
    pytest.param(["quay.io/pangeo/*"], [], "gpu", "quay.io/evil/x",
                 ["quay.io/evil/x is not in the list of allowed images for the gpu profile",
                  "allowed: quay.io/pangeo/*."], [], id="not-listed-names-image-profile-rules"),
    pytest.param(SEVEN_RULES, [], None, "quay.io/evil/x",
                 [*SEVEN_RULES[:5], "and 2 more"], SEVEN_RULES[5:], id="at-most-five-rules"),
    pytest.param(SEVEN_RULES[:5], [], None, "quay.io/evil/x", SEVEN_RULES[:5], ["more"],
                 id="exactly-five-rules"),
    pytest.param(["quay.io/**"], ["quay.io/pangeo/*:latest"], "cpu", "quay.io/pangeo/x",
                 ["quay.io/pangeo/x", "quay.io/pangeo/*:latest", "cpu profile", "tag"], [],
                 id="deny-by-tag-suggests-tag"),
    pytest.param(["quay.io/**"], ["quay.io/evil/*"], None, "quay.io/evil/x",
                 ["quay.io/evil/x", "blocked", "quay.io/evil/*", "another repository"],
                 ["profile"], id="deny-by-name"),
    pytest.param([], [], "locked", "quay.io/x/y", ["quay.io/x/y", "no images are allowed",
                                                    "locked profile"], [], id="nothing-allowed"),
    pytest.param(["quay.io/pangeo/*"], [], None, "quay.io/pangeo/x:1",
                 ["quay.io/pangeo/x:1", "allowed by quay.io/pangeo/*"], [], id="allowed"),
    pytest.param(["docker.io/library/*"], [], None, "ubuntu",
                 ["docker.io/library/ubuntu", "allowed by docker.io/library/*"], [],
                 id="allowed-hub-name-normalized"),
]  # fmt: skip


@pytest.mark.parametrize(("allow", "deny", "profile", "image", "present", "absent"), REASONS)
def test_reason(
    allow: list[str],
    deny: list[str],
    profile: str | None,
    image: str,
    present: list[str],
    absent: list[str],
) -> None:
    reason = Policy.from_patterns(allow, deny).decide(parse(image), profile=profile).reason
    assert_sentence(reason)
    for fragment in present:
        assert fragment in reason
    for fragment in absent:
        assert fragment not in reason


# --- rule patterns: accepted and refused in one table ---------------------------------------

PATTERNS = [
    # pattern as written; error: None when valid; fragment expected in the message
    pytest.param("quay.io/pangeo/*", None, None, id="org-star"),
    pytest.param("quay.io/**", None, None, id="host-wide"),
    pytest.param("QUAY.IO/x", None, None, id="upper-case-host"),
    pytest.param("127.0.0.1:5000/x", None, None, id="ipv4-port"),
    pytest.param("[::1]:5000/x", None, None, id="ipv6-port"),
    pytest.param("localhost/x", None, None, id="localhost"),
    pytest.param("quay.io/x:v1.*", None, None, id="tag-glob"),
    pytest.param("quay.io/x:**", None, None, id="tag-double-star"),
    pytest.param("quay.io/a_b.c-d/e__f", None, None, id="separators"),
    pytest.param("jupyter/*", PolicyPatternError, "write docker.io/jupyter/*",
                 id="no-host-hub-org"),
    pytest.param("/x", PolicyPatternError, "registry host", id="empty-host"),
    pytest.param("quay.io", PolicyPatternError, "no path", id="host-only"),
    pytest.param("quay.io/", PolicyPatternError, "no path", id="host-slash"),
    pytest.param("", PolicyPatternError, "no path", id="empty"),
    pytest.param("*.quay.io/x", PolicyPatternError, "without wildcards", id="wildcard-subdomain"),
    pytest.param("quay.*/x", PolicyPatternError, "without wildcards", id="wildcard-tld"),
    pytest.param("**/x", PolicyPatternError, "without wildcards", id="wildcard-host"),
    pytest.param("https://quay.io/x", PolicyPatternError, "registry host", id="url-scheme"),
    pytest.param("quay.io/[", PolicyPatternError, "invalid repository glob '['", id="bracket"),
    pytest.param("quay.io/a?", PolicyPatternError, "invalid repository glob", id="question-mark"),
    pytest.param("quay.io/{a,b}", PolicyPatternError, "invalid repository glob", id="braces"),
    pytest.param("quay.io/a b", PolicyPatternError, "invalid repository glob", id="space"),
    pytest.param("quay.io/Pangeo/*", PolicyPatternError, "lower-case", id="upper-case-path"),
    pytest.param("quay.io//x", PolicyPatternError, "invalid repository glob", id="empty-segment"),
    pytest.param("quay.io/x/", PolicyPatternError, "invalid repository glob", id="trailing-slash"),
    pytest.param("quay.io/a/***", PolicyPatternError, "'a/***'", id="triple-star"),
    pytest.param("quay.io/x:***", PolicyPatternError, "invalid tag glob", id="triple-star-tag"),
    pytest.param("quay.io/x:", PolicyPatternError, "invalid tag glob", id="empty-tag"),
    pytest.param("quay.io/x:a:b", PolicyPatternError, "invalid tag glob", id="two-colons"),
    pytest.param("quay.io/x:" + "a" * 129, PolicyPatternError, "invalid tag glob",
                 id="tag-glob-129"),
    pytest.param(f"quay.io/x@{DIGEST}", PolicyPatternError, "invalid repository glob",
                 id="digest"),
    pytest.param("quay.io/x\n", PolicyPatternError, "invalid repository glob", id="newline"),
    pytest.param("quay.io\x00/x", PolicyPatternError, "registry host", id="nul-in-host"),
    pytest.param("quay.io/" + "a" * 600, PolicyPatternError, "at most 512 characters",
                 id="overlong"),
    pytest.param(5, PolicyPatternError, "must be a string, not int", id="int"),
    pytest.param(None, PolicyPatternError, "must be a string, not NoneType", id="none"),
    pytest.param(b"quay.io/x", PolicyPatternError, "must be a string, not bytes", id="bytes"),
    pytest.param(["quay.io/x"], PolicyPatternError, "must be a string, not list", id="list"),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "error", "fragment"), PATTERNS)
def test_pattern(pattern: object, error: type[Exception] | None, fragment: str | None) -> None:
    if error is None:
        rule = compile_rule(pattern)  # type: ignore[arg-type]
        assert rule.pattern == pattern
        return
    with pytest.raises(error) as caught:
        compile_rule(pattern)  # type: ignore[arg-type]
    assert fragment is not None
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 400, "an overlong pattern must not be echoed whole"


def test_invalid_pattern_in_policy_set_is_refused() -> None:
    with pytest.raises(PolicyPatternError, match=re.escape("'quay.io/['")):
        PolicySet.build(["quay.io/**"], [], {"gpu": ProfilePolicy(deny=("quay.io/[",))})


# --- hostile input ---------------------------------------------------------------------------

HOSTILE_IMAGES = [
    pytest.param("quay.io/" + "a" * 10_000, id="10kB"),
    pytest.param("quay.io/pangeo/x\x00", id="nul"),
    pytest.param("quay.io/pangeo/x\r\nHost: evil", id="crlf"),
    pytest.param("quay.io/pangeo/x\x1b[2J", id="escape"),
    pytest.param("quay.io/pangeo/\u0445", id="cyrillic-lookalike"),
    pytest.param("quay\u2024io/pangeo/x", id="one-dot-leader-lookalike"),
    pytest.param("quay.io/pangeo/x\u200b", id="zero-width-space"),
    pytest.param("quay.io/pangeo/*", id="glob-as-image"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("image", HOSTILE_IMAGES)
def test_hostile_image_never_reaches_the_policy(image: str) -> None:
    """The grammar refuses these with a sentence, so no allow rule can admit them."""
    with pytest.raises(InvalidReference) as caught:
        parse(image)
    assert_sentence(str(caught.value))


PATHOLOGICAL_RULES = [
    # Rules whose regex translation backtracks exponentially on a long run of one letter.
    pytest.param("quay.io/" + "*a" * 8 + "*b", "quay.io/" + "a" * 240, False, id="star-a-8"),
    pytest.param("quay.io/" + "*a" * 200 + "*", "quay.io/" + "a" * 240, True, id="star-a-200"),
    pytest.param("quay.io/" + "*a" * 200 + "*", "quay.io/" + "a" * 199, False, id="one-short"),
    pytest.param("quay.io/" + "**a" * 60 + "*b", "quay.io/" + "a/" * 110 + "a", False,
                 id="double-star-a-60"),
    pytest.param("quay.io/x:" + "*a" * 40 + "*b", "quay.io/x:" + "a" * 128, False,
                 id="tag-star-a-40"),
]  # fmt: skip


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("rule", "image", "allowed"), PATHOLOGICAL_RULES)
def test_pathological_rule_does_not_hang(rule: str, image: str, allowed: bool) -> None:
    assert decide([rule], [], image).allowed is allowed
