"""Tables for the config loader (imagewarden.config): every file goes through load_config.

Refused rows name the key path the error must carry and fragments of its message (the bad
value among them); accepted rows name a property of the resulting Settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagewarden.config import (
    DEFAULT_SETTINGS,
    MAX_CONFIG_BYTES,
    FailureMode,
    RegistrySettings,
    Settings,
    load_config,
)
from imagewarden.errors import ConfigError
from imagewarden.policy import PolicyMode
from imagewarden.reference import parse


@dataclass(frozen=True)
class Loads:
    """The file loads and ``getter(settings) == value``."""

    getter: Callable[[Settings], object]
    value: object


@dataclass(frozen=True)
class Refused:
    """load_config raises ConfigError at ``key_path``; the message has every fragment in
    ``present`` and none in ``absent``."""

    key_path: str
    present: tuple[str, ...]
    absent: tuple[str, ...] = ()


Expected = Loads | Refused


def load_text(tmp_path: Path, text: str | bytes) -> Settings:
    path = tmp_path / "imagewarden.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return load_config(path)


def check(tmp_path: Path, text: str | bytes, expected: Expected) -> None:
    if isinstance(expected, Loads):
        assert expected.getter(load_text(tmp_path, text)) == expected.value
        return
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.key_path == expected.key_path
    message = str(error)
    if expected.key_path:
        assert message.startswith(f"{expected.key_path}: ")
    for fragment in expected.present:
        assert fragment in message
    for fragment in expected.absent:
        assert fragment not in message
    assert len(message) < 600, "errors quote bad values shortened, not whole"


def policy_of(settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return settings.allow, settings.deny


SETTINGS = [
    # text of the YAML file; expected outcome
    # --- the document itself
    pytest.param("", Loads(lambda s: s, DEFAULT_SETTINGS), id="empty-file-is-defaults"),
    pytest.param("# nothing here\n", Loads(policy_of, (("docker.io/**", "quay.io/**"), ())),
                 id="comment-only-is-defaults"),
    pytest.param("\ufeffpolicy: {allow: [quay.io/x]}", Loads(lambda s: s.allow, ("quay.io/x",)),
                 id="utf8-bom"),
    pytest.param("polcy: {}", Refused("polcy", ("unknown key", "policy", "registries")),
                 id="unknown-top-key"),
    pytest.param("- a\n- b\n", Refused("", ("must be a mapping", "list"))),
    pytest.param("just text", Refused("", ("must be a mapping", "'just text'")),
                 id="scalar-document"),
    pytest.param("{true: 1}", Refused("", ("keys must be strings", "True")), id="bool-key"),
    # --- registries
    pytest.param("registries: {quay.io: {}}",
                 Loads(lambda s: dict(s.registries), {"quay.io": RegistrySettings()}),
                 id="registry-defaults"),
    pytest.param("registries: {docker.io: {endpoint: 'https://mirror.example.org/'}}",
                 Loads(lambda s: s.registries["docker.io"].endpoint, "https://mirror.example.org"),
                 id="registry-mirror-trailing-slash"),
    pytest.param("registries: {'127.0.0.1:5000': {endpoint: 'http://127.0.0.1:5000'}}",
                 Loads(lambda s: s.registries["127.0.0.1:5000"].endpoint,
                       "http://127.0.0.1:5000"), id="registry-plain-http-written-out"),
    pytest.param("registries: {'[::1]:5000': {endpoint: 'http://[::1]:5000/v2-prefix'}}",
                 Loads(lambda s: s.registries["[::1]:5000"].endpoint,
                       "http://[::1]:5000/v2-prefix"), id="registry-ipv6-with-path"),
    pytest.param("registries: {QUAY.IO: {}}", Loads(lambda s: list(s.registries), ["quay.io"]),
                 id="registry-host-lower-cased"),
    pytest.param("registries: {index.docker.io: {}}",
                 Loads(lambda s: list(s.registries), ["docker.io"]),
                 id="registry-legacy-hub-host"),
    pytest.param("registries: {private.example.org: {username: bot, password_file: /s/pw}}",
                 Loads(lambda s: s.registries["private.example.org"],
                       RegistrySettings(username="bot", password_file="/s/pw")),
                 id="registry-static-credentials"),
    pytest.param("registries: {quay.io: {endpoint: 'ftp://mirror'}}",
                 Refused("registries.quay.io.endpoint", ("'ftp://mirror'", "http:// or https://")),
                 id="endpoint-ftp"),
    pytest.param("registries: {quay.io: {endpoint: 'mirror.example.org'}}",
                 Refused("registries.quay.io.endpoint", ("'mirror.example.org'", "http://")),
                 id="endpoint-no-scheme"),
    pytest.param("registries: {quay.io: {endpoint: 'https://'}}",
                 Refused("registries.quay.io.endpoint", ("'https://'", "with a host")),
                 id="endpoint-no-host"),
    pytest.param("registries: {quay.io: {endpoint: 'https://bot:s3cret@mirror'}}",
                 Refused("registries.quay.io.endpoint", ("credentials", "password_file"),
                         absent=("s3cret",)), id="endpoint-credentials-not-echoed"),
    pytest.param("registries: {quay.io: {endpoint: 'https://bot@mirror'}}",
                 Refused("registries.quay.io.endpoint", ("credentials",)),
                 id="endpoint-user-only"),
    pytest.param("registries: {quay.io: {endpoint: 'https://mirror?ns=quay.io'}}",
                 Refused("registries.quay.io.endpoint", ("'https://mirror?ns=quay.io'", "query")),
                 id="endpoint-query"),
    pytest.param("registries: {quay.io: {endpoint: 'https://mirror#x'}}",
                 Refused("registries.quay.io.endpoint", ("fragment",)), id="endpoint-fragment"),
    pytest.param("registries: {quay.io: {endpoint: 'https://[::1'}}",
                 Refused("registries.quay.io.endpoint", ("'https://[::1'", "not a URL")),
                 id="endpoint-broken-ipv6"),
    pytest.param("registries: {quay.io: {endpoint: 'https://mirror:99999'}}",
                 Refused("registries.quay.io.endpoint", ("not a URL", "99999")),
                 id="endpoint-port-range"),
    pytest.param("registries: {quay.io: {endpoint: 5}}",
                 Refused("registries.quay.io.endpoint", ("must be a string", "int 5")),
                 id="endpoint-not-string"),
    pytest.param("registries: {quay.io: {username: bot}}",
                 Refused("registries.quay.io", ("username and password_file go together",)),
                 id="username-without-password-file"),
    pytest.param("registries: {quay.io: {password_file: /s/pw}}",
                 Refused("registries.quay.io", ("username and password_file go together",)),
                 id="password-file-without-username"),
    pytest.param("registries: {quay.io: {password: hunter2}}",
                 Refused("registries.quay.io.password", ("unknown key", "password_file"),
                         absent=("hunter2",)), id="inline-password-unknown-key"),
    pytest.param("registries: {quay.io: {mirror: x}}",
                 Refused("registries.quay.io.mirror", ("unknown key", "endpoint")),
                 id="registry-unknown-key"),
    pytest.param("registries: {quay.io/org: {}}",
                 Refused("registries.quay.io/org", ("'quay.io/org'", "not a registry host")),
                 id="registry-host-with-path"),
    pytest.param("registries: {'*.example.org': {}}",
                 Refused("registries.*.example.org", ("'*.example.org'", "not a registry host")),
                 id="registry-host-wildcard"),
    pytest.param("registries: {'https://quay.io': {}}",
                 Refused("registries.https://quay.io", ("not a registry host",)),
                 id="registry-host-url"),
    pytest.param("registries: {5000: {}}", Refused("registries", ("keys must be strings", "5000")),
                 id="registry-host-number"),
    pytest.param("registries: {quay.io: {}, QUAY.IO: {endpoint: 'https://m'}}",
                 Refused("registries.QUAY.IO",
                         ("'QUAY.IO'", "same registry as registries.quay.io")),
                 id="registry-host-twice"),
    pytest.param("registries: {docker.io: {}, index.docker.io: {}}",
                 Refused("registries.index.docker.io", ("same registry as registries.docker.io",)),
                 id="registry-hub-twice"),
    pytest.param("registries: [quay.io]", Refused("registries", ("must be a mapping", "list"))),
    pytest.param("registries: {quay.io: [a]}",
                 Refused("registries.quay.io", ("must be a mapping", "['a']")),
                 id="registry-not-mapping"),
    # --- credentials
    pytest.param("credentials: {docker_config: /c.json, dockerconfigjson_files: [/a, /b]}",
                 Loads(lambda s: (s.credentials.docker_config,
                                  s.credentials.dockerconfigjson_files), ("/c.json", ("/a", "/b"))),
                 id="credentials"),
    pytest.param("credentials: {docker_config: 5}",
                 Refused("credentials.docker_config", ("must be a string", "int 5"))),
    pytest.param("credentials: {dockerconfigjson_files: /a}",
                 Refused("credentials.dockerconfigjson_files", ("must be a list", "'/a'")),
                 id="credentials-files-not-list"),
    pytest.param("credentials: {dockerconfigjson_files: [/a, 7]}",
                 Refused("credentials.dockerconfigjson_files[1]", ("must be a string", "7")),
                 id="credentials-files-item"),
    pytest.param("credentials: {helpers: {}}",
                 Refused("credentials.helpers", ("unknown key", "docker_config")),
                 id="credentials-unknown-key"),
    # --- policy
    pytest.param("policy: {allow: ['quay.io/pangeo/*'], deny: ['quay.io/pangeo/*:latest']}",
                 Loads(policy_of, (("quay.io/pangeo/*",), ("quay.io/pangeo/*:latest",))),
                 id="policy"),
    pytest.param("policy: {deny: ['quay.io/evil/*']}",
                 Loads(policy_of, (("docker.io/**", "quay.io/**"), ("quay.io/evil/*",))),
                 id="policy-deny-only-keeps-default-allow"),
    pytest.param("policy: {allow: []}", Loads(policy_of, ((), ())),
                 id="policy-allow-nothing"),
    pytest.param("policy: {allow: ['quay.io/a/*', 'docker.io/**', 'quay.io/[']}",
                 Refused("policy.allow[2]",
                         ("policy.allow[2]: 'quay.io/[' is not a valid pattern: ", "'['")),
                 id="allow-bad-glob"),
    pytest.param("policy: {deny: ['quay.io/a/***']}",
                 Refused("policy.deny[0]", ("'quay.io/a/***' is not a valid pattern",)),
                 id="deny-triple-star"),
    pytest.param("policy: {deny: ['jupyter/*']}",
                 Refused("policy.deny[0]", ("'jupyter/*'", "docker.io/jupyter/*")),
                 id="deny-without-host"),
    pytest.param("policy: {allow: ['*.io/x']}",
                 Refused("policy.allow[0]", ("'*.io/x'", "without wildcards")),
                 id="allow-wildcard-host"),
    pytest.param("policy: {allow: 'quay.io/**'}",
                 Refused("policy.allow", ("must be a list", "got a string 'quay.io/**'")),
                 id="allow-not-list"),
    pytest.param("policy: {allow: [5]}", Refused("policy.allow[0]", ("must be a string", "5")),
                 id="allow-item-not-string"),
    pytest.param("policy: {allow: [{quay.io: x}]}",
                 Refused("policy.allow[0]", ("must be a string", "got a mapping")),
                 id="allow-item-mapping"),
    pytest.param('policy: {allow: ["quay.io/x\\a"]}',
                 Refused("policy.allow[0]", ("control character",)), id="allow-control-char"),
    pytest.param(f"policy: {{allow: ['quay.io/{'a' * 10_000}']}}",
                 Refused("policy.allow[0]", ("10008 characters long",)), id="allow-10kB"),
    pytest.param(f"policy: {{allow: ['quay.io/{'a' * 600}']}}",
                 Refused("policy.allow[0]", ("at most 512 characters",)), id="allow-overlong"),
    pytest.param("policy: {allow: [" + "quay.io/x, " * 10_001 + "]}",
                 Refused("policy.allow", ("10001 items", "at most 10000")), id="allow-too-many"),
    pytest.param("policy: {dney: []}", Refused("policy.dney", ("unknown key", "allow, deny")),
                 id="policy-misspelt-deny"),
    pytest.param("policy: {mode: replace}", Refused("policy.mode", ("unknown key",)),
                 id="policy-mode-only-in-profiles"),
    pytest.param("policy: [quay.io/x]", Refused("policy", ("must be a mapping",)),
                 id="policy-not-mapping"),
    # --- profiles
    pytest.param("profiles: {gpu: {platform: linux/arm64, policy: {allow: [quay.io/nv/*], "
                 "mode: replace}}}",
                 Loads(lambda s: (s.platform_for("gpu"), s.profiles["gpu"].policy.allow,
                                  s.profiles["gpu"].policy.mode),
                       ("linux/arm64", ("quay.io/nv/*",), PolicyMode.REPLACE)), id="profile"),
    pytest.param("profiles: {gpu: null}",
                 Loads(lambda s: (s.platform_for("gpu"), s.profiles["gpu"].policy.mode),
                       ("linux/amd64", PolicyMode.EXTEND)), id="profile-empty-defaults"),
    pytest.param("profiles: {arm: {platform: linux/arm64/v8}}",
                 Loads(lambda s: s.platform_for("arm"), "linux/arm64/v8"),
                 id="profile-platform-variant"),
    pytest.param("profiles: {gpu: {policy: {mode: merge}}}",
                 Refused("profiles.gpu.policy.mode", ("'merge' is not one of: extend, replace",)),
                 id="profile-mode-enum"),
    pytest.param("profiles: {gpu: {policy: {mode: 1}}}",
                 Refused("profiles.gpu.policy.mode", ("1 is not one of",)),
                 id="profile-mode-number"),
    pytest.param("profiles: {gpu: {platform: linux}}",
                 Refused("profiles.gpu.platform", ("'linux' is not a platform", "os/arch")),
                 id="profile-platform-no-arch"),
    pytest.param("profiles: {gpu: {platform: linux/amd64/v1/x}}",
                 Refused("profiles.gpu.platform", ("'linux/amd64/v1/x' is not a platform",)),
                 id="profile-platform-too-many-parts"),
    pytest.param("profiles: {gpu: {platform: 'linux/amd 64'}}",
                 Refused("profiles.gpu.platform", ("is not a platform",)),
                 id="profile-platform-space"),
    pytest.param("profiles: {gpu: {platfrom: linux/amd64}}",
                 Refused("profiles.gpu.platfrom", ("unknown key", "platform, policy")),
                 id="profile-unknown-key"),
    pytest.param("profiles: {gpu: {policy: {alow: []}}}",
                 Refused("profiles.gpu.policy.alow", ("unknown key", "allow, deny, mode")),
                 id="profile-policy-unknown-key"),
    pytest.param("profiles: {gpu: {policy: {allow: [quay.io/ok/*, x]}}}",
                 Refused("profiles.gpu.policy.allow[1]", ("'x' is not a valid pattern",)),
                 id="profile-bad-pattern"),
    pytest.param("profiles: {gpu: {policy: {deny: quay.io/x}}}",
                 Refused("profiles.gpu.policy.deny", ("must be a list",)),
                 id="profile-deny-not-list"),
    pytest.param("profiles: {5: {}}", Refused("profiles", ("keys must be strings", "5")),
                 id="profile-name-number"),
    pytest.param("profiles: {gpu: [x]}", Refused("profiles.gpu", ("must be a mapping",)),
                 id="profile-not-mapping"),
    # --- checker
    pytest.param("checker: {timeout_seconds: 2.5, failure_mode: allow, tag_ttl_seconds: 30, "
                 "miss_ttl_seconds: 0, stale_if_error_seconds: 60, cache_entries: 5}",
                 Loads(lambda s: (s.checker.timeout_seconds, s.checker.failure_mode,
                                  s.checker.tag_ttl_seconds, s.checker.miss_ttl_seconds,
                                  s.checker.stale_if_error_seconds, s.checker.cache_entries),
                       (2.5, FailureMode.ALLOW, 30.0, 0.0, 60.0, 5)), id="checker"),
    pytest.param("checker: {failure_mode: maybe}",
                 Refused("checker.failure_mode", ("'maybe' is not one of: refuse, allow",)),
                 id="failure-mode-enum"),
    pytest.param("checker: {failure_mode: yes}",
                 Refused("checker.failure_mode", ("True is not one of",)),
                 id="failure-mode-yaml-bool"),
    pytest.param("checker: {timeout_seconds: 0}",
                 Refused("checker.timeout_seconds", ("more than 0",)), id="timeout-zero"),
    pytest.param("checker: {timeout_seconds: -1}",
                 Refused("checker.timeout_seconds", ("-1", "out of range")), id="timeout-negative"),
    pytest.param("checker: {timeout_seconds: 301}",
                 Refused("checker.timeout_seconds", ("301", "out of range")), id="timeout-too-big"),
    pytest.param("checker: {timeout_seconds: .nan}",
                 Refused("checker.timeout_seconds", ("nan", "out of range")), id="timeout-nan"),
    pytest.param("checker: {timeout_seconds: .inf}",
                 Refused("checker.timeout_seconds", ("inf", "out of range")), id="timeout-inf"),
    pytest.param("checker: {timeout_seconds: 5s}",
                 Refused("checker.timeout_seconds", ("must be a number", "'5s'")),
                 id="timeout-with-unit"),
    pytest.param("checker: {timeout_seconds: true}",
                 Refused("checker.timeout_seconds", ("must be a number", "bool")),
                 id="timeout-bool"),
    pytest.param("checker: {tag_ttl_seconds: -5}",
                 Refused("checker.tag_ttl_seconds", ("-5", "out of range")), id="ttl-negative"),
    pytest.param("checker: {stale_if_error_seconds: 700000}",
                 Refused("checker.stale_if_error_seconds", ("700000", "out of range")),
                 id="stale-too-long"),
    pytest.param("checker: {cache_entries: 1.5}",
                 Refused("checker.cache_entries", ("must be a whole number", "1.5")),
                 id="cache-entries-float"),
    pytest.param("checker: {cache_entries: 0}",
                 Refused("checker.cache_entries", ("0 is out of range",)), id="cache-entries-zero"),
    pytest.param("checker: {timeout: 5}",
                 Refused("checker.timeout", ("unknown key", "timeout_seconds")),
                 id="checker-unknown-key"),
    # --- service
    pytest.param("service: {host: 0.0.0.0, port: 9000, token_file: /t, max_body_bytes: 4096, "
                 "max_concurrent_checks: 8}",
                 Loads(lambda s: (s.service.host, s.service.port, s.service.token_file,
                                  s.service.max_body_bytes, s.service.max_concurrent_checks),
                       ("0.0.0.0", 9000, "/t", 4096, 8)), id="service"),
    pytest.param("service: {port: 70000}", Refused("service.port", ("70000", "out of range")),
                 id="port-range"),
    pytest.param("service: {port: '80'}", Refused("service.port", ("must be a whole number",
                                                                   "'80'")), id="port-string"),
    pytest.param('service: {host: "a\\nb"}', Refused("service.host", ("control character",)),
                 id="host-newline"),
    pytest.param("service: {max_body_bytes: 100}",
                 Refused("service.max_body_bytes", ("100", "out of range")), id="body-too-small"),
    pytest.param("service: {max_concurrent_checks: 0}",
                 Refused("service.max_concurrent_checks", ("0", "out of range")),
                 id="concurrency-zero"),
    pytest.param("service: {token_file: 5}",
                 Refused("service.token_file", ("must be a string",)), id="token-file-number"),
    pytest.param("service: {token: abc}",
                 Refused("service.token", ("unknown key", "token_file"), absent=("abc",)),
                 id="service-inline-token"),
    # --- prepull (parsed by imagewarden.prepull.pools; the path must still be named)
    pytest.param("prepull: {namespace: jhub}", Loads(lambda s: s.prepull.namespace, "jhub"),
                 id="prepull"),
    pytest.param("prepull: {bogus: 1}", Refused("prepull.bogus", ("unknown key",)),
                 id="prepull-unknown-key"),
    # --- anchors and aliases are plain YAML: they work where the values are valid
    pytest.param("policy: {allow: &rules [quay.io/pangeo/*]}\n"
                 "profiles: {gpu: {policy: {allow: *rules, mode: replace}}}",
                 Loads(lambda s: s.profiles["gpu"].policy.allow, ("quay.io/pangeo/*",)),
                 id="alias-shared-rules"),
    pytest.param("registries:\n  quay.io: &m {endpoint: 'https://m.example.org'}\n"
                 "  ghcr.io: {<<: *m}",
                 Loads(lambda s: s.registries["ghcr.io"].endpoint, "https://m.example.org"),
                 id="merge-key"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SETTINGS)
def test_settings(tmp_path: Path, text: str, expected: Expected) -> None:
    check(tmp_path, text, expected)


# --- the file itself ---------------------------------------------------------------------


FILES = [
    # raw bytes of the file; expected outcome
    pytest.param(b"", Loads(lambda s: s, DEFAULT_SETTINGS), id="empty"),
    pytest.param(b"policy: {allow: [\xff\xfe]}",
                 Refused("", ("is not UTF-8 text", "imagewarden.yaml")), id="not-utf8"),
    pytest.param("policy: {allow: [quay.io/ü]}".encode("latin-1"),
                 Refused("", ("is not UTF-8 text",)), id="latin1"),
    pytest.param(b"policy: {allow: [quay.io/x}\n", Refused("", ("is not valid YAML", "line 1")),
                 id="unbalanced-brackets"),
    pytest.param(b"policy:\n\tallow: []\n", Refused("", ("is not valid YAML", "line 2")),
                 id="tab-indent"),
    pytest.param(b"policy: {}\n---\npolicy: {}\n", Refused("", ("is not valid YAML",
                                                                "single document")),
                 id="two-documents"),
    pytest.param(b"!!python/object/apply:os.system ['touch /tmp/imagewarden-pwned']\n",
                 Refused("", ("is not valid YAML",)), id="python-tag"),
    pytest.param(b"#" * MAX_CONFIG_BYTES, Loads(lambda s: s, DEFAULT_SETTINGS),
                 id="exactly-1MiB"),
    pytest.param(b"#" * (MAX_CONFIG_BYTES + 1),
                 Refused("", ("larger than 1048576 bytes",)), id="over-1MiB"),
    pytest.param(b"a" * 8_000_000, Refused("", ("larger than 1048576 bytes",)), id="8MB"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "expected"), FILES)
def test_file(tmp_path: Path, content: bytes, expected: Expected) -> None:
    check(tmp_path, content, expected)
    assert not Path("/tmp/imagewarden-pwned").exists()


@pytest.mark.parametrize(
    ("make_path", "fragment"),
    [
        pytest.param(lambda tmp: tmp / "missing.yaml", "No such file", id="missing"),
        pytest.param(lambda tmp: tmp, "Is a directory", id="directory"),
    ],
)
def test_unreadable_file(tmp_path: Path, make_path: Callable[[Path], Path], fragment: str) -> None:
    path = make_path(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key_path == ""
    assert "cannot read config file" in str(caught.value)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A flow sequence whose last item is ``width ** levels`` strings when expanded."""
    items = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        items.append(f"&l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "[" + ", ".join(items) + "]"


BOMB = alias_bomb()

BOMBS = [
    # YAML with the bomb in a position; key path expected in the error
    pytest.param(f"policy: {{allow: {BOMB}}}", "policy.allow[0]", id="allow-list"),
    pytest.param(f"policy: {{allow: [quay.io/**], deny: [{BOMB}]}}", "policy.deny[0]",
                 id="deny-item"),
    pytest.param(f"policy: {BOMB}", "policy", id="policy"),
    pytest.param(f"registries: {{quay.io: {BOMB}}}", "registries.quay.io", id="registry"),
    pytest.param(f"registries: {{quay.io: {{endpoint: {BOMB}}}}}", "registries.quay.io.endpoint",
                 id="endpoint"),
    pytest.param(f"checker: {{failure_mode: {BOMB}}}", "checker.failure_mode", id="enum"),
    pytest.param(f"checker: {{timeout_seconds: {BOMB}}}", "checker.timeout_seconds",
                 id="number"),
    pytest.param(f"profiles: {{gpu: {{policy: {{mode: {BOMB}}}}}}}", "profiles.gpu.policy.mode",
                 id="profile-mode"),
    pytest.param(f"credentials: {{dockerconfigjson_files: [{BOMB}]}}",
                 "credentials.dockerconfigjson_files[0]", id="credentials"),
    pytest.param("policy: {allow: &r [*r]}", "policy.allow[0]", id="self-referencing-list"),
    pytest.param("policy: &r {allow: [quay.io/x], deny: *r}", "policy.deny",
                 id="self-referencing-mapping"),
]  # fmt: skip


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("text", "key_path"), BOMBS)
def test_alias_bomb_is_a_config_error(tmp_path: Path, text: str, key_path: str) -> None:
    """Billion laughs: 9**9 strings if anything walked or printed the expanded document."""
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert caught.value.key_path == key_path
    assert len(str(caught.value)) < 600


# --- built-in defaults ---------------------------------------------------------------------

DEFAULT_DECISIONS = [
    # image; allowed by the built-in defaults
    pytest.param("ubuntu:22.04", True, id="hub-official"),
    pytest.param("jupyter/base-notebook", True, id="hub-org"),
    pytest.param("quay.io/pangeo/pangeo-notebook:2023.09.11", True, id="quay"),
    pytest.param("quay.io/a/b/c", True, id="quay-deep"),
    pytest.param("ghcr.io/owner/image:1", False, id="ghcr"),
    pytest.param("registry.k8s.io/pause:3.9", False, id="k8s"),
    pytest.param("nvcr.io/nvidia/pytorch:23.10-py3", False, id="nvcr"),
    pytest.param("127.0.0.1:5000/x", False, id="local-registry"),
    pytest.param("quay.io.evil.example/x", False, id="quay-lookalike-host"),
]


@pytest.mark.parametrize(("image", "allowed"), DEFAULT_DECISIONS)
@pytest.mark.parametrize("source", ["no-file", "empty-file"])
def test_builtin_defaults(tmp_path: Path, source: str, image: str, allowed: bool) -> None:
    settings = load_config(None) if source == "no-file" else load_text(tmp_path, "")
    decision = settings.policy.decide(parse(image))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert "allowed: docker.io/**, quay.io/**." in decision.reason


def test_builtin_defaults_values() -> None:
    settings = load_config(None)
    assert dict(settings.registries) == {}
    assert settings.checker.failure_mode is FailureMode.REFUSE
    assert settings.checker.timeout_seconds == 5.0
    assert (settings.service.host, settings.service.port) == ("127.0.0.1", 8080)
    assert settings.prepull.pools == {}


def test_profiles_reach_the_compiled_policy(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        "policy: {allow: ['quay.io/pangeo/*'], deny: ['quay.io/pangeo/*:latest']}\n"
        "profiles:\n"
        "  gpu: {policy: {allow: ['quay.io/nvidia/*']}}\n"
        "  narrow: {policy: {allow: ['quay.io/pangeo/one:*'], mode: replace}}\n",
    )
    policy = settings.policy

    def allowed(image: str, profile: str | None) -> bool:
        return policy.decide(parse(image), profile=profile).allowed

    assert allowed("quay.io/nvidia/cuda:12", "gpu")
    assert not allowed("quay.io/nvidia/cuda:12", None)
    assert not allowed("quay.io/pangeo/x:latest", "gpu")
    assert allowed("quay.io/pangeo/x:1", "gpu")
    assert not allowed("quay.io/pangeo/x:1", "narrow")
    assert allowed("quay.io/pangeo/one:latest", "narrow")
