"""Strict parsing of image references, and the explanation of every refusal.

``parse_parts`` is docker/distribution's ``Parse``: it accepts exactly the grammar in
``grammar.py``, splits a reference into registry, path, tag and digest, and applies the
checks that come after the match (name length, digest algorithm and length, port
range, IPv6 syntax). It knows nothing about Docker Hub: ``ubuntu`` has no registry
here. Adding the Docker Hub defaults is ``normalize.py``'s job, which runs next.

When a string is refused, this module works out *why* with plain string operations and
small anchored pieces, so that the message names the broken rule (upper case in the
path, an empty tag, a short digest, a URL scheme, ...) instead of "invalid reference
format". All checks that can run on unbounded input are linear string scans; the
regular expressions only ever see input of bounded length (``MAX_REFERENCE_LENGTH``),
so hostile 10 kB strings cannot make the parser slow.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

from imagewarden.errors import InvalidReference
from imagewarden.reference import grammar

MAX_NAME_LENGTH = 255
"""Most characters a full name (registry, ``/``, path) may have, as in distribution."""

MAX_TAG_LENGTH = 128
"""Most characters a tag may have (the grammar's ``{0,127}`` after the first)."""

DIGEST_HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}
"""Supported digest algorithms and the number of hex digits each one's digest has."""

MAX_REFERENCE_LENGTH = (
    MAX_NAME_LENGTH
    + len(":")
    + MAX_TAG_LENGTH
    + len("@")
    + max(len(f"{algorithm}:") + hex_digits for algorithm, hex_digits in DIGEST_HEX_LENGTHS.items())
)
"""Longest string that can possibly be a valid reference (520); longer input is refused
before any regular expression runs on it."""

MAX_SHOWN_CHARACTERS = 80
"""Longest part of a user's value quoted in a message; the rest is elided."""

COMMAND_PREFIXES = (
    "docker pull ",
    "docker image pull ",
    "docker run ",
    "podman pull ",
    "podman run ",
    "nerdctl pull ",
    "crictl pull ",
    "ctr image pull ",
)
"""Commands people paste together with the image name, checked case-insensitively."""

_CONTROL_CHARACTER_NAMES = {
    "\x00": "NUL",
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\x7f": "DEL",
}
_CONTROL_CHARACTER_RE = re.compile(r"[\x00-\x1f\x7f]")
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}://")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_TAG_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_PATH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_PATH_ALPHANUMERIC = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_HOST_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_PATH_RULE = (
    "a repository path uses lower-case letters and digits, with one '.', one or two '_' "
    "or any number of '-' only between them"
)


@dataclass(frozen=True, slots=True)
class ReferenceParts:
    """A reference split by the grammar alone, with no Docker Hub defaults applied."""

    domain: str | None
    """Registry host and optional port as written (``quay.io``, ``[::1]:5000``); ``None``
    when the grammar found no registry part."""

    path: str
    """Repository path, such as ``library/ubuntu``."""

    tag: str | None
    """Tag without the ``:``, or ``None``."""

    digest: str | None
    """Digest such as ``sha256:<hex>``, or ``None``."""

    @property
    def name(self) -> str:
        """Registry and path joined by ``/`` (only the path when there is no registry)."""
        return self.path if self.domain is None else f"{self.domain}/{self.path}"


def show(value: str) -> str:
    """Quote a user's value for a message, escaping control characters and eliding
    everything after ``MAX_SHOWN_CHARACTERS`` so a 10 kB input gives a short message."""
    if len(value) <= MAX_SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:MAX_SHOWN_CHARACTERS]!r}... ({len(value)} characters)"


def refusal(text: str, problem: str) -> InvalidReference:
    """The exception for ``text``, with the rule it breaks and how to fix it."""
    return InvalidReference(f"{show(text)} is not a valid image reference: {problem}.")


def describe_character(character: str) -> str:
    """Name a character for a message: ``'ｕ' (U+FF55 FULLWIDTH LATIN SMALL LETTER U)``."""
    code = f"U+{ord(character):04X}"
    if character in _CONTROL_CHARACTER_NAMES:
        return f"{code} {_CONTROL_CHARACTER_NAMES[character]}"
    name = unicodedata.name(character, "")
    return f"{character!r} ({code} {name})" if name else code


def check_text(text: str) -> None:
    """Refuse what people paste instead of a reference, before any grammar runs.

    Catches a ``docker pull`` command, a URL scheme, surrounding or inner whitespace,
    control characters, non-ASCII look-alike letters and oversized input, each with its
    own message. Every check is a linear scan, so this is safe on input of any length.
    """
    if not isinstance(text, str):
        raise TypeError(f"an image reference must be a str, not {type(text).__name__}")
    if text == "":
        raise InvalidReference(
            "The image reference is empty; type an image name such as 'ubuntu:22.04' "
            "or 'quay.io/jupyter/base-notebook:latest'."
        )
    stripped = text.strip()
    if stripped == "":
        raise refusal(
            text, "it contains only whitespace; type an image name such as 'ubuntu:22.04'"
        )
    lowered = stripped[: max(map(len, COMMAND_PREFIXES))].lower() + " "
    for command in COMMAND_PREFIXES:
        if lowered.startswith(command):
            rest = stripped[len(command) :].strip()
            suggestion = f"; here that is {show(rest)}" if rest and " " not in rest else ""
            raise refusal(
                text,
                f"it starts with the command {command.strip()!r}; give only the image "
                f"reference itself{suggestion}",
            )
    scheme = _URL_SCHEME_RE.match(stripped)
    if scheme is not None:
        rest = stripped[scheme.end() :]
        suggestion = f" and write {show(rest)}" if rest else ""
        raise refusal(
            text,
            f"image references have no URL scheme; remove the {scheme.group()} prefix{suggestion}",
        )
    if stripped != text:
        raise refusal(
            text,
            "it starts or ends with whitespace (a space, tab or line break); remove it and "
            f"write {show(stripped)}",
        )
    control = _CONTROL_CHARACTER_RE.search(text)
    if control is not None:
        raise refusal(
            text,
            f"it contains the control character {describe_character(control.group())} at "
            f"position {control.start() + 1}; an image reference is one line of printable "
            "text, so retype it without that character",
        )
    space = text.find(" ")
    if space >= 0:
        raise refusal(
            text,
            f"it contains a space at position {space + 1}; an image reference has no spaces "
            "(write a tag as 'name:tag')",
        )
    if not text.isascii():
        position, character = next((i, c) for i, c in enumerate(text) if not c.isascii())
        lookalike = unicodedata.normalize("NFKC", character)
        hint = (
            f" (it looks like {lookalike!r})"
            if lookalike.isascii() and lookalike.isprintable() and lookalike != character
            else ""
        )
        raise refusal(
            text,
            f"a non-ASCII character {describe_character(character)} was found at position "
            f"{position + 1}{hint}; image references use only plain ASCII letters, digits "
            "and . _ - / : @ [ ], so retype it instead of copying it from a document",
        )
    if len(text) > MAX_REFERENCE_LENGTH:
        raise refusal(
            text,
            f"it is {len(text)} characters long, but even the longest valid reference "
            f"(a {MAX_NAME_LENGTH}-character name, a {MAX_TAG_LENGTH}-character tag and a "
            f"sha512 digest) has {MAX_REFERENCE_LENGTH}; check that you pasted only the image "
            "reference",
        )


def digest_problem(digest: str) -> str | None:
    """Why ``digest`` is not a supported digest, or ``None`` when it is fine."""
    algorithm, colon, encoded = digest.partition(":")
    example = "'sha256:' followed by 64 hexadecimal digits"
    if not colon or not algorithm:
        return f"the digest {show(digest)} must have the form {example}"
    if grammar.ANCHORED_DIGEST_ALGORITHM_RE.match(algorithm) is None:
        return f"{show(algorithm)} is not a digest algorithm name; a digest looks like {example}"
    expected_length = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected_length is None:
        if algorithm.lower() in DIGEST_HEX_LENGTHS:
            return (
                f"the digest algorithm {show(algorithm)} must be written in lower case, "
                f"as {algorithm.lower()!r}"
            )
        return (
            f"the digest algorithm {show(algorithm)} is not supported; "
            f"use one of {', '.join(DIGEST_HEX_LENGTHS)}"
        )
    if encoded == "":
        return (
            f"nothing follows {algorithm + ':'!r}; append the {expected_length} hexadecimal "
            "digits of the digest"
        )
    bad = next((c for c in encoded if c not in _HEX_DIGITS), None)
    if bad is not None:
        return (
            f"the digest contains {bad!r}, which is not a hexadecimal digit; a {algorithm} "
            f"digest is {expected_length} characters from 0-9 and a-f"
        )
    if len(encoded) != expected_length:
        return (
            f"a {algorithm} digest has {expected_length} hexadecimal digits, but "
            f"{show(digest)} has {len(encoded)}; copy the whole digest"
        )
    if encoded != encoded.lower():
        lowered = f"{algorithm}:{encoded.lower()}"
        return f"the digest's hexadecimal digits must be lower case; write {show(lowered)}"
    return None


def tag_problem(tag: str) -> str | None:
    """Why ``tag`` is not a valid tag, or ``None`` when it is fine."""
    if tag == "":
        return "a ':' is not followed by a tag; add a tag such as ':22.04', or remove the ':'"
    if len(tag) > MAX_TAG_LENGTH:
        return f"the tag is {len(tag)} characters long, but a tag may have at most {MAX_TAG_LENGTH}"
    bad = next((c for c in tag if c not in _TAG_CHARACTERS), None)
    if bad is not None:
        return (
            f"the tag {show(tag)} contains {bad!r}, which is not allowed; a tag may only use "
            "letters, digits, '_', '.' and '-'"
        )
    if tag[0] in ".-":
        return (
            f"the tag {show(tag)} starts with {tag[0]!r}; a tag must start with a letter, "
            "digit or '_'"
        )
    return None


def port_problem(port: str) -> str | None:
    """Why ``port`` (the text after a host's ``:``) is not a usable port number."""
    if port == "":
        return "a ':' after the registry host is not followed by a port number"
    if not port.isdigit() or not port.isascii():
        return f"the registry port {show(port)} must be a number such as 5000"
    if not 1 <= int(port) <= 65535:
        return f"the registry port {port} is out of range; ports go from 1 to 65535"
    return None


def host_problem(domain: str) -> str | None:
    """Why ``domain`` (registry host with optional port) is not usable, or ``None``."""
    if domain.startswith("["):
        end = domain.find("]")
        if end < 0:
            return f"the IPv6 address in {show(domain)} has no closing ']'"
        address, after = domain[1:end], domain[end + 1 :]
        if "%" in address:
            return (
                f"IPv6 zone identifiers such as {show(address[address.index('%') :])} are not "
                "supported in image references; use the address without the zone"
            )
        if re.fullmatch(r"[a-fA-F0-9:]+", address, re.ASCII) is None:
            return (
                f"the IPv6 address {show(address)} may only contain hexadecimal digits and ':' "
                "(no embedded IPv4 form)"
            )
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"{show(address)} is not a valid IPv6 address"
        if after == "":
            return None
        if not after.startswith(":"):
            return f"a bracketed IPv6 host must be followed by ':port' or '/', not {show(after)}"
        return port_problem(after[1:])
    if domain.count(":") > 1:
        return (
            f"the registry host {show(domain)} has more than one ':'; write an IPv6 address "
            "in brackets, like [fc00::1]:5000"
        )
    host, colon, port = domain.partition(":")
    if host == "":
        return "the registry host before ':' is empty"
    for label in host.split("."):
        if label == "":
            return (
                f"the registry host {show(host)} has an empty part (two dots in a row, or a dot "
                "at the start or end)"
            )
        bad = next((c for c in label if c not in _HOST_CHARACTERS), None)
        if bad is not None:
            return (
                f"the registry host {show(host)} contains {bad!r}, which is not allowed in a "
                "host name; use letters, digits, '-' and '.'"
            )
        if label[0] == "-" or label[-1] == "-":
            return (
                f"the part {show(label)} of the registry host {show(host)} starts or ends "
                "with '-'; host name parts must start and end with a letter or digit"
            )
    return port_problem(port) if colon else None


def path_component_problem(component: str) -> str | None:
    """Why one ``/``-separated part of a repository path is invalid, or ``None``."""
    if component == "":
        return (
            "the repository path has an empty part (two '/' in a row, or a '/' at the start "
            "or end); remove the extra '/'"
        )
    for character in component:
        if "A" <= character <= "Z":
            return (
                f"the repository path part {show(component)} contains the upper-case letter "
                f"{character!r}, but repository paths must be lower-case"
            )
        if character not in _PATH_CHARACTERS:
            return (
                f"the repository path part {show(component)} contains {character!r}, which is "
                f"not allowed; {_PATH_RULE}"
            )
    if component[0] not in _PATH_ALPHANUMERIC or component[-1] not in _PATH_ALPHANUMERIC:
        return (
            f"the repository path part {show(component)} must start and end with a lower-case "
            "letter or digit"
        )
    for separator in re.findall(r"[._-]+", component):
        if separator not in (".", "_", "__") and set(separator) != {"-"}:
            return (
                f"{separator!r} in the repository path part {show(component)} is not a valid "
                f"separator; {_PATH_RULE}"
            )
    return None


def looks_like_host(segment: str) -> bool:
    """Whether a first name segment is meant as a registry host (the Docker rule:
    it contains ``.`` or ``:``, is ``localhost``, or has an upper-case letter).
    A leading ``[`` (an IPv6 address) counts as well."""
    return segment == "localhost" or any(c in segment for c in ".:[") or segment != segment.lower()


def name_problem(name: str) -> str | None:
    """Why ``name`` (registry and path, no tag or digest) is invalid, or ``None``."""
    if name == "":
        return "the image name is missing; a reference starts with a name such as 'ubuntu'"
    segments = name.split("/")
    if len(segments) > 1 and looks_like_host(segments[0]):
        problem = host_problem(segments[0])
        if problem is None:
            segments = segments[1:]
        elif grammar.ANCHORED_PATH_COMPONENT_RE.match(segments[0]) is None:
            return problem
    for segment in segments:
        problem = path_component_problem(segment)
        if problem is not None:
            return problem
    return None


def split_reference(text: str) -> tuple[str, str | None, str | None]:
    """Split into name, tag and digest the way the grammar would, with string
    operations only: the digest follows the first ``@``, the tag the last ``:`` that
    comes after the last ``/``."""
    name_and_tag, at, digest = text.partition("@")
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        return name_and_tag[:colon], name_and_tag[colon + 1 :], digest if at else None
    return name_and_tag, None, digest if at else None


def host_without_repository(text: str) -> str | None:
    """The message for a bracketed IPv6 registry written without a repository path."""
    if text.startswith("[") and "/" not in text:
        host = re.match(r"\[[^\]]*\](?::[0-9]+)?", text)
        example = f", as in {show(host.group() + '/myimage')}" if host else ""
        return (
            "it is a registry address without a repository; add '/' and the repository "
            f"path{example}"
        )
    return None


def diagnose(text: str) -> str:
    """Explain why ``text`` does not match the grammar, as specifically as possible.

    Like distribution, a string that matches once lower-cased is reported as an
    upper-case path; otherwise digest, tag, registry and path are checked in turn.
    """
    if text != text.lower() and grammar.REFERENCE_RE.match(text.lower()) is not None:
        name, tag, digest = split_reference(text)
        first, slash, rest = name.partition("/")
        has_domain = bool(slash) and grammar.ANCHORED_DOMAIN_AND_PORT_RE.match(first) is not None
        domain = first if has_domain else ""
        path = rest if domain else name
        fixed = (f"{domain}/" if domain else "") + path.lower()
        fixed += (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest else "")
        return (
            f"the repository path {show(path)} contains upper-case letters, but repository "
            f"paths must be lower-case; write {show(fixed)}"
        )
    problem = host_without_repository(text)
    if problem is not None:
        return problem
    first, slash, _ = text.partition("/")
    if slash and first.startswith("["):
        # A bracketed host may hold '%zone' or even '@', which must not be read as a digest.
        problem = host_problem(first)
        if problem is not None:
            return problem
    if text.count("@") > 1:
        return "it contains more than one '@'; only the digest follows an '@'"
    name, tag, digest = split_reference(text)
    if digest is not None:
        problem = (
            "an '@' is not followed by a digest; add one such as 'sha256:<64 hex digits>', "
            "or remove the '@'"
            if digest == ""
            else digest_problem(digest)
        )
        if problem is not None:
            return problem
    if tag is not None:
        problem = tag_problem(tag)
        if problem is not None:
            return problem
    problem = name_problem(name)
    if problem is not None:
        return problem
    return (
        "it does not match the form [registry[:port]/]path[:tag][@digest], "
        "as in 'quay.io/jupyter/base-notebook:latest'"
    )


def match_parts(text: str, *, shown: str | None = None) -> ReferenceParts:
    """Match ``text`` against the grammar and apply the checks that follow the match.

    ``text`` must already have passed ``check_text`` (which bounds its length).
    ``shown`` is the string quoted in messages, when that differs from ``text`` (for
    example the user's ``ubuntu`` for ``docker.io/library/ubuntu``).
    """
    shown = text if shown is None else shown
    match = grammar.REFERENCE_RE.match(text)
    if match is None:
        raise refusal(shown, diagnose(text))
    name, tag, digest = match.group(1, 2, 3)
    if len(name) > MAX_NAME_LENGTH:
        raise refusal(
            shown,
            f"the name {show(name)} is {len(name)} characters long, but a full repository "
            f"name (registry, '/' and path) may have at most {MAX_NAME_LENGTH}",
        )
    if digest is not None:
        problem = digest_problem(digest)
        if problem is not None:
            raise refusal(shown, problem)
    name_match = grammar.ANCHORED_NAME_RE.match(name)
    assert name_match is not None, "REFERENCE's name group always matches ANCHORED_NAME"
    domain, path = name_match.group(1, 2)
    if domain is not None:
        problem = host_problem(domain)
        if problem is not None:
            raise refusal(shown, problem)
    return ReferenceParts(domain=domain, path=path, tag=tag, digest=digest)


def parse_parts(text: str) -> ReferenceParts:
    """Parse ``text`` by the grammar alone, like distribution's ``Parse``.

    No Docker Hub defaults are applied: ``ubuntu`` gives ``domain=None``, and
    ``a/b`` gives ``domain='a'`` because the grammar takes a first segment that
    is a valid host as the registry. Raises ``InvalidReference``.
    """
    check_text(text)
    return match_parts(text)
