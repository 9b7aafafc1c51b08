"""Tests for the grammar pieces (``grammar.py``) and strict parsing (``parse_parts``).

The piece tables follow docker/distribution's regexp_test.go: each piece is compiled on
its own, anchored, and its structure (number of capturing groups) is checked. The
``parse_parts`` table is reference_test.go's ``TestReferenceParse``, which runs without
Docker Hub defaults.
"""

from __future__ import annotations

import re

import pytest

from imagewarden.reference import InvalidReference, ReferenceParts, grammar, parse_parts

SHA256 = "sha256:" + "f" * 64
BE17 = "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"

PIECES = [
    "ALPHA_NUMERIC",
    "SEPARATOR",
    "PATH_COMPONENT",
    "REMOTE_NAME",
    "DOMAIN_NAME_COMPONENT",
    "DOMAIN_NAME",
    "IPV6_ADDRESS",
    "HOST",
    "OPTIONAL_PORT",
    "DOMAIN_AND_PORT",
    "NAME",
    "TAG",
    "DIGEST_ALGORITHM_COMPONENT",
    "DIGEST_ALGORITHM_SEPARATOR",
    "DIGEST_ALGORITHM",
    "DIGEST_HEX",
    "DIGEST",
    "IDENTIFIER",
]


@pytest.mark.parametrize("piece", PIECES)
def test_pieces_compile_anchored_without_capturing(piece: str) -> None:
    # Pieces are building blocks: a capturing group inside one would shift every group
    # number of the patterns built from it.
    compiled = re.compile(grammar.anchored(getattr(grammar, piece)))
    assert compiled.groups == 0


def test_reference_has_name_tag_digest_groups() -> None:
    assert grammar.REFERENCE_RE.groups == 3
    assert grammar.ANCHORED_NAME_RE.groups == 2


def test_helpers_build_the_expected_syntax() -> None:
    assert grammar.optional("a", "b") == "(?:ab)?"
    assert grammar.any_times("a") == "(?:a)*"
    assert grammar.capture("a", "b") == "(ab)"
    assert grammar.anchored("a") == r"\Aa\Z"
    assert grammar.literal("[.]") == r"\[\.\]"
    assert grammar.expression("a", "b", "c") == "abc"


def test_anchoring_refuses_trailing_newline_unlike_dollar() -> None:
    # Why anchored() uses \Z: Python's $ also matches before a final "\n".
    assert re.match(f"^{grammar.NAME}$", "ubuntu\n") is not None
    assert re.match(grammar.anchored(grammar.NAME), "ubuntu\n") is None


@pytest.mark.parametrize(
    ("piece", "text"),
    [
        pytest.param("TAG", "é", id="tag-unicode-letter"),
        pytest.param("TAG", "v١", id="tag-arabic-digit"),
        pytest.param("PATH_COMPONENT", "ａ", id="path-fullwidth"),
        pytest.param("DOMAIN_NAME_COMPONENT", "ÿ", id="host-latin1"),
        pytest.param("DIGEST_HEX", "٠" * 32, id="hex-arabic-digits"),
    ],
)
def test_pieces_are_ascii_only(piece: str, text: str) -> None:
    assert re.match(grammar.anchored(getattr(grammar, piece)), text, re.ASCII) is None


DOMAIN_AND_PORT_RE = re.compile(grammar.anchored(grammar.DOMAIN_AND_PORT))


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        pytest.param("test.com", True, id="host"),
        pytest.param("test.com:10304", True, id="port"),
        pytest.param("test.com:http", False, id="named-port"),
        pytest.param("localhost", True, id="localhost"),
        pytest.param("localhost:8080", True, id="localhost-port"),
        pytest.param("a", True, id="one-letter"),
        pytest.param("a.b", True, id="two-labels"),
        pytest.param("ab.cd.com", True, id="three-labels"),
        pytest.param("a-b.com", True, id="inner-dash"),
        pytest.param("-ab.com", False, id="leading-dash"),
        pytest.param("ab-.com", False, id="trailing-dash"),
        pytest.param("ab.c-om", True, id="dash-in-tld"),
        pytest.param("ab.-com", False, id="tld-leading-dash"),
        pytest.param("ab.com-", False, id="tld-trailing-dash"),
        pytest.param("0101.com", True, id="numeric-label"),
        pytest.param("001a.com", True, id="leading-zeros"),
        pytest.param("b.gbc.io:443", True, id="gcr-port"),
        pytest.param("xn--n3h.com", True, id="punycode"),
        pytest.param("Asdf.com", True, id="uppercase"),
        pytest.param("192.168.1.1:75050", True, id="ipv4-big-port-is-grammar-ok"),
        pytest.param("[fd00:1:2::3]:75050", True, id="ipv6"),
        pytest.param("[fd00:1:2::3]75050", False, id="ipv6-no-port-colon"),
        pytest.param("[fd00:1:2::3]::75050", False, id="ipv6-double-colon-port"),
        pytest.param("[fd00:1:2::3%eth0]:75050", False, id="ipv6-zone"),
        pytest.param("[fd00123123123]:75050", True, id="ipv6-shape-only"),
        pytest.param("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050", True, id="ipv6-long"),
        pytest.param("fd00:1:2::3:75050", False, id="ipv6-no-brackets"),
        pytest.param("foo_bar.com", False, id="underscore"),
        pytest.param("ａ.com", False, id="fullwidth"),
    ],
)
def test_domain_and_port(text: str, matches: bool) -> None:
    assert (DOMAIN_AND_PORT_RE.match(text) is not None) is matches


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        pytest.param("", None, id="empty"),
        pytest.param("short", (None, "short"), id="short"),
        pytest.param("simple/name", ("simple", "name"), id="simple"),
        pytest.param("library/ubuntu", ("library", "ubuntu"), id="library"),
        pytest.param("docker/stevvooe/app", ("docker", "stevvooe/app"), id="three"),
        pytest.param("aa/aa/bb/bb/bb", ("aa", "aa/bb/bb/bb"), id="five"),
        pytest.param("a/a/a/a", ("a", "a/a/a"), id="letters"),
        pytest.param("a/a/a/a/", None, id="trailing-slash"),
        pytest.param("a//a/a", None, id="double-slash"),
        pytest.param("a", (None, "a"), id="a"),
        pytest.param("a/aa", ("a", "aa"), id="a-aa"),
        pytest.param("foo.com", (None, "foo.com"), id="dotted-alone-is-path"),
        pytest.param("foo.com/", None, id="host-slash"),
        pytest.param("foo.com:8080/bar", ("foo.com:8080", "bar"), id="host-port"),
        pytest.param("foo.com:http/bar", None, id="named-port"),
        pytest.param("foo.com/bar/baz", ("foo.com", "bar/baz"), id="host-nested"),
        pytest.param("localhost:8080/bar", ("localhost:8080", "bar"), id="localhost"),
        pytest.param(
            "sub-dom1.foo.com/bar/baz/quux", ("sub-dom1.foo.com", "bar/baz/quux"), id="sub"
        ),
        pytest.param("a^a", None, id="caret"),
        pytest.param("aa/asdf$$^/aa", None, id="dollar"),
        pytest.param("aa-a/a", ("aa-a", "a"), id="dash-host"),
        pytest.param("a/" * 128 + "a", ("a", "a/" * 127 + "a"), id="repeat-128"),
        pytest.param("a-/a/a/a", None, id="trailing-dash"),
        pytest.param("foo.com/a-/a/a", None, id="path-trailing-dash"),
        pytest.param("-foo/bar", None, id="leading-dash"),
        pytest.param("foo/bar-", None, id="last-trailing-dash"),
        pytest.param("foo/-bar", None, id="path-leading-dash"),
        pytest.param("_foo/bar", None, id="leading-underscore"),
        pytest.param("foo_bar", (None, "foo_bar"), id="underscore"),
        pytest.param("foo_bar.com", (None, "foo_bar.com"), id="underscore-dotted"),
        pytest.param("foo_bar.com:8080", None, id="underscore-port"),
        pytest.param("foo_bar.com:8080/app", None, id="underscore-host-port"),
        pytest.param("foo.com/foo_bar", ("foo.com", "foo_bar"), id="host-underscore-path"),
        pytest.param("____/____", None, id="underscores"),
        pytest.param(
            "b.gcr.io/test.example.com/my-app", ("b.gcr.io", "test.example.com/my-app"), id="gcr"
        ),
        pytest.param("xn--n3h.com/myimage", ("xn--n3h.com", "myimage"), id="punycode"),
        pytest.param(
            "example.com/xn--7o8h.com/myimage",
            ("example.com", "xn--7o8h.com/myimage"),
            id="puny-path",
        ),
        pytest.param("example.com/__underscore/myimage", None, id="leading-double-underscore"),
        pytest.param("example.com/..dots/myimage", None, id="leading-dots"),
        pytest.param("example.com/nodouble..dots/myimage", None, id="double-dots"),
        pytest.param("do__cker:8080/docker", None, id="underscore-host-with-port"),
        pytest.param("do__cker/docker", (None, "do__cker/docker"), id="double-underscore"),
        pytest.param("Asdf.com/foo/bar", ("Asdf.com", "foo/bar"), id="uppercase-host"),
        pytest.param("Foo/FarB", None, id="uppercase-path"),
        pytest.param("[::1]:5000/x", ("[::1]:5000", "x"), id="ipv6"),
    ],
)
def test_anchored_name(text: str, groups: tuple[str | None, str] | None) -> None:
    match = grammar.ANCHORED_NAME_RE.match(text)
    assert (match.groups() if match else None) == groups


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        pytest.param(
            "registry.com:8080/myapp:tag", ("registry.com:8080/myapp", "tag", None), id="tag"
        ),
        pytest.param(
            f"registry.com:8080/myapp@{BE17}", ("registry.com:8080/myapp", None, BE17), id="digest"
        ),
        pytest.param(
            f"registry.com:8080/myapp:tag2@{BE17}",
            ("registry.com:8080/myapp", "tag2", BE17),
            id="both",
        ),
        pytest.param("registry.com:8080/myapp@sha256:badbadbadbad", None, id="short-digest"),
        pytest.param("registry.com:8080/myapp:invalid~tag", None, id="tilde"),
        pytest.param("bad_hostname.com:8080/myapp:tag", None, id="bad-host"),
        pytest.param(
            f"localhost:8080@{BE17}", ("localhost", "8080", BE17), id="localhost-port-is-tag"
        ),
        pytest.param(
            f"localhost:8080/name@{BE17}", ("localhost:8080/name", None, BE17), id="localhost"
        ),
        pytest.param(f"localhost:http/name@{BE17}", None, id="named-port"),
        pytest.param(f"localhost@{BE17}", ("localhost", None, BE17), id="localhost-is-name"),
        pytest.param("registry.com:8080/myapp@bad", None, id="bad-digest"),
        pytest.param("registry.com:8080/myapp@2bad", None, id="digit-digest"),
        pytest.param("ubuntu\n", None, id="trailing-newline"),
        pytest.param("ubuntu:" + "a" * 128, ("ubuntu", "a" * 128, None), id="tag-128"),
        pytest.param("ubuntu:" + "a" * 129, None, id="tag-129"),
    ],
)
def test_reference_regexp(text: str, groups: tuple[str, str | None, str | None] | None) -> None:
    match = grammar.REFERENCE_RE.match(text)
    assert (match.groups() if match else None) == groups


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        pytest.param(
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821", True, id="id"
        ),
        pytest.param(
            "7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C", False, id="upper"
        ),
        pytest.param(
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf", False, id="short"
        ),
        pytest.param(
            "sha256:da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
            False,
            id="digest",
        ),
        pytest.param(
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482", False, id="long"
        ),
    ],
)
def test_identifier(text: str, matches: bool) -> None:
    assert (grammar.ANCHORED_IDENTIFIER_RE.match(text) is not None) is matches


def parts(
    domain: str | None, path: str, tag: str | None = None, digest: str | None = None
) -> ReferenceParts:
    return ReferenceParts(domain=domain, path=path, tag=tag, digest=digest)


STRICT_CASES = [
    pytest.param("test_com", parts(None, "test_com"), id="test_com"),
    pytest.param("test.com:tag", parts(None, "test.com", "tag"), id="dotted-tag"),
    pytest.param("test.com:5000", parts(None, "test.com", "5000"), id="port-like-tag"),
    pytest.param("test.com/repo:tag", parts("test.com", "repo", "tag"), id="host-repo-tag"),
    pytest.param("test:5000/repo", parts("test:5000", "repo"), id="port"),
    pytest.param("test:5000/repo:tag", parts("test:5000", "repo", "tag"), id="port-tag"),
    pytest.param(
        f"test:5000/repo@{SHA256}", parts("test:5000", "repo", None, SHA256), id="port-digest"
    ),
    pytest.param(
        f"test:5000/repo:tag@{SHA256}",
        parts("test:5000", "repo", "tag", SHA256),
        id="port-tag-digest",
    ),
    pytest.param("", "empty", id="empty"),
    pytest.param(":justtag", "image name is missing", id="just-tag"),
    pytest.param(f"@{SHA256}", "image name is missing", id="just-digest"),
    pytest.param("repo@sha256:" + "f" * 34, "has 34", id="short-digest"),
    pytest.param(
        "validname@invaliddigest:" + "f" * 64,
        "'invaliddigest' is not supported",
        id="unknown-algorithm",
    ),
    pytest.param("Uppercase:tag", "must be lower-case; write 'uppercase:tag'", id="uppercase"),
    pytest.param(
        "test:5000/Uppercase/lowercase:tag",
        "write 'test:5000/uppercase/lowercase:tag'",
        id="uppercase-after-host",
    ),
    pytest.param("lowercase:Uppercase", parts(None, "lowercase", "Uppercase"), id="tag-case"),
    pytest.param("a/" * 128 + "a:tag", "257 characters long", id="repeat-128"),
    pytest.param(
        "a/" * 127 + "a:tag-puts-this-over-max",
        parts("a", "a/" * 126 + "a", "tag-puts-this-over-max"),
        id="repeat-127-exactly-255",
    ),
    pytest.param("aa/asdf$$^/aa", "contains '$'", id="dollar"),
    pytest.param(
        "sub-dom1.foo.com/bar/baz/quux", parts("sub-dom1.foo.com", "bar/baz/quux"), id="subdomain"
    ),
    pytest.param(
        "b.gcr.io/test.example.com/my-app:test.example.com",
        parts("b.gcr.io", "test.example.com/my-app", "test.example.com"),
        id="gcr",
    ),
    pytest.param(
        "xn--n3h.com/myimage:xn--n3h.com",
        parts("xn--n3h.com", "myimage", "xn--n3h.com"),
        id="punycode",
    ),
    pytest.param("foo_bar.com:8080", parts(None, "foo_bar.com", "8080"), id="underscore-tag"),
    pytest.param("foo/foo_bar.com:8080", parts("foo", "foo_bar.com", "8080"), id="underscore-path"),
    pytest.param("foo_bar.com/x", parts(None, "foo_bar.com/x"), id="invalid-host-is-path"),
    pytest.param("192.168.1.1", parts(None, "192.168.1.1"), id="ipv4-alone"),
    pytest.param(
        "192.168.1.1:5000/repo:5050", parts("192.168.1.1:5000", "repo", "5050"), id="ipv4"
    ),
    pytest.param("[2001:db8::1]", "registry address without a repository", id="ipv6-alone"),
    pytest.param("[2001:db8::1]:5000", "registry address without a repository", id="ipv6-port"),
    pytest.param("[2001:db8::1]:tag", "registry address without a repository", id="ipv6-tag"),
    pytest.param("[2001:db8::1]/repo", parts("[2001:db8::1]", "repo"), id="ipv6-repo"),
    pytest.param(
        f"[2001:db8::1]:5000/repo:tag@{SHA256}",
        parts("[2001:db8::1]:5000", "repo", "tag", SHA256),
        id="ipv6-everything",
    ),
    pytest.param("[::1]:5000/repo", parts("[::1]:5000", "repo"), id="ipv6-loopback"),
    pytest.param("[fe80::1%eth0]:5000/repo", "zone identifiers", id="ipv6-zone"),
    pytest.param("[fe80::1%@invalidzone]:5000/repo", "zone identifiers", id="ipv6-zone-at"),
    pytest.param("[fd00123123123]:5000/repo", "not a valid IPv6 address", id="ipv6-not-address"),
    pytest.param("192.168.1.1:750050/repo", "out of range", id="port-range"),
    pytest.param("ubuntu ", "whitespace", id="whitespace"),
    pytest.param("ubuntu\x00", "NUL", id="nul"),
    pytest.param("https://quay.io/x", "remove the https:// prefix", id="scheme"),
]


@pytest.mark.parametrize(("text", "expected"), STRICT_CASES)
def test_parse_parts(text: str, expected: ReferenceParts | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(InvalidReference) as caught:
            parse_parts(text)
        assert expected in str(caught.value)
        return
    result = parse_parts(text)
    assert result == expected
    assert (
        result.name
        + (f":{result.tag}" if result.tag else "")
        + (f"@{result.digest}" if result.digest else "")
        == text
    )
