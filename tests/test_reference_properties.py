"""Property tests for ``imagewarden.reference`` (hypothesis).

(a) References generated from the grammar pieces parse, and normalizing is a fixed
    point: ``parse(str(parse(x))) == parse(x)``, and the familiar form parses back.
(b) ``parse`` on arbitrary text never raises anything but ``InvalidReference``, and its
    messages stay short, printable sentences.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import NamedTuple

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from imagewarden.reference import (
    DEFAULT_DOMAIN,
    DIGEST_HEX_LENGTHS,
    MAX_NAME_LENGTH,
    InvalidReference,
    Reference,
    grammar,
    parse,
    parse_canonical,
    parse_parts,
)


class Generated(NamedTuple):
    """A reference assembled from its parts, and what parse() must make of it."""

    # the text handed to parse()
    text: str
    # registry written in the text, or None for a Docker Hub name
    domain: str | None
    # repository path as written
    path: str
    # tag, or None
    tag: str | None
    # digest, or None
    digest: str | None


alphanumeric = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=5)
separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(alphanumeric)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(separator), draw(alphanumeric)]
    return "".join(parts)


label_edge = st.sampled_from(string.ascii_letters + string.digits)
domain_label = label_edge | st.builds(
    lambda first, middle, last: first + middle + last,
    label_edge,
    st.text(string.ascii_letters + string.digits + "-", max_size=6),
    label_edge,
)
hostnames = st.one_of(
    st.lists(domain_label, min_size=2, max_size=4).map(".".join),
    st.sampled_from(["localhost", "docker.io", "index.docker.io", "Registry"]),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address.compressed}]"),
)
ports = st.integers(1, 65535).map(lambda port: f":{port}")
tag_start = st.sampled_from(string.ascii_letters + string.digits + "_")
tags = st.builds(
    lambda first, rest: first + rest,
    tag_start,
    st.text(string.ascii_letters + string.digits + "_.-", max_size=12)
    | st.text("a.-_9Z", min_size=120, max_size=127),
)
digests = st.sampled_from(sorted(DIGEST_HEX_LENGTHS.items())).flatmap(
    lambda item: st.text("0123456789abcdef", min_size=item[1], max_size=item[1]).map(
        lambda encoded: f"{item[0]}:{encoded}"
    )
)


@st.composite
def generated_references(draw: st.DrawFn) -> Generated:
    domain = draw(st.none() | st.builds(lambda h, p: h + p, hostnames, st.just("") | ports))
    components = draw(st.lists(path_components(), min_size=1, max_size=6))
    if domain is None and len(components) > 1:
        # Docker reads a first segment with '.' as a registry; keep Hub names Hub names.
        assume("." not in components[0] and components[0] != "localhost")
    path = "/".join(components)
    tag = draw(st.none() | tags)
    digest = draw(st.none() | digests)
    text = (f"{domain}/" if domain else "") + path
    text += (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest else "")
    return Generated(text, domain, path, tag, digest)


def expected_name(generated: Generated) -> tuple[str, str]:
    """Domain and path that normalization must produce."""
    domain = generated.domain
    if domain is None or domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    path = generated.path
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    return domain, path


@settings(max_examples=300)
@given(generated_references())
@example(Generated("ubuntu", None, "ubuntu", None, None))
@example(Generated("[::1]:5000/a.b/c", "[::1]:5000", "a.b/c", None, None))
@example(Generated("docker.io/a.b/c", "docker.io", "a.b/c", None, None))
@example(Generated("docker.io/localhost/c:1", "docker.io", "localhost/c", "1", None))
def test_generated_references_normalize_to_a_fixed_point(generated: Generated) -> None:
    domain, path = expected_name(generated)
    if len(f"{domain}/{path}") > MAX_NAME_LENGTH:
        with pytest.raises(InvalidReference, match="characters long"):
            parse(generated.text)
        return
    if domain == DEFAULT_DOMAIN and grammar.ANCHORED_IDENTIFIER_RE.match(generated.text):
        return  # a bare 64-hex name; refused on purpose (covered in test_reference.py)
    reference = parse(generated.text)
    assert reference == Reference(domain, path, generated.tag, generated.digest)
    assert parse(str(reference)) == reference
    assert parse_canonical(str(reference)) == reference
    assert parse(reference.familiar) == reference
    assert len(reference.familiar) <= len(str(reference))
    assert hash(parse(str(reference))) == hash(reference)


@settings(max_examples=100)
@given(generated_references())
def test_strict_parse_agrees_with_normalized_parse_on_canonical_text(generated: Generated) -> None:
    try:
        reference = parse(generated.text)
    except InvalidReference:
        assume(False)
        return
    strict = parse_parts(str(reference))
    assert (strict.domain, strict.path, strict.tag, strict.digest) == (
        reference.domain,
        reference.path,
        reference.tag,
        reference.digest,
    )


def refusal_message(function: Callable[[str], object], text: str) -> str | None:
    """The InvalidReference message ``function(text)`` raises, or None if it returns."""
    try:
        function(text)
    except InvalidReference as error:
        return str(error)
    return None


def check_outcome(text: str) -> None:
    """Either a reference that round-trips, or an InvalidReference with a good message."""
    message = refusal_message(parse, text)
    if message is None:
        reference = parse(text)
        assert parse(str(reference)) == reference
        assert parse(reference.familiar) == reference
        return
    assert message.endswith(".")
    assert message.isprintable()
    assert len(message) < 800


grammar_tokens = st.lists(
    st.sampled_from([*"aZ09._-/:@[]%+ \t\nｕа\x00", "sha256", "f" * 32, "//"]), max_size=40
).map("".join)


@settings(max_examples=500)
@given(st.text(max_size=60) | grammar_tokens | st.text(max_size=2000))
def test_parse_never_raises_anything_but_invalid_reference(text: str) -> None:
    check_outcome(text)


@st.composite
def mutated_references(draw: st.DrawFn) -> str:
    text = draw(generated_references()).text
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        character = draw(st.sampled_from(list(":/@.-_[]%A \n\x00é")))
        if action == "insert":
            text = text[:position] + character + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position] + character + text[position + 1 :]
    return text


@settings(max_examples=300)
@given(mutated_references())
def test_near_miss_references_are_accepted_or_explained(text: str) -> None:
    check_outcome(text)
    message = refusal_message(parse_parts, text)
    assert message is None or message.endswith(".")
