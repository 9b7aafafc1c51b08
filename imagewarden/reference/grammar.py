"""The image reference grammar as named regular-expression pieces.

This module owns *only* the syntax: which strings are well-formed references and how
they split into name, tag and digest. It knows nothing about Docker Hub defaults
(``normalize.py``) nor about explaining mistakes (``parse.py``); those run next.

The grammar follows docker/distribution's ``reference`` package::

    reference           := name [ ":" tag ] [ "@" digest ]
    name                := [ domain-and-port "/" ] remote-name
    domain-and-port     := host [ ":" port-number ]
    host                := domain-name | "[" ipv6-address "]"   ; rfc3986 appendix-A
    domain-name         := domain-component [ "." domain-component ]*
    domain-component    := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    ipv6-address        := /[a-fA-F0-9:]+/   ; no zone ("%eth0"), no dotted IPv4 tail
    port-number         := /[0-9]+/
    remote-name         := path-component [ "/" path-component ]*
    path-component      := alpha-numeric [ separator alpha-numeric ]*
    alpha-numeric       := /[a-z0-9]+/
    separator           := /[_.]|__|[-]+/

    tag                 := /[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}/

    digest              := digest-algorithm ":" digest-hex
    digest-algorithm    := algorithm-component [ algorithm-separator algorithm-component ]*
    algorithm-separator := /[+._-]/
    algorithm-component := /[A-Za-z][A-Za-z0-9]*/
    digest-hex          := /[0-9a-fA-F]{32,}/   ; at least 128 bits

    identifier          := /[a-f0-9]{64}/        ; an image ID, refused as a name

The regular grammar is deliberately looser than what is finally accepted: digest
algorithms and hex lengths, name length and port range are checked after the match
(in ``parse.py``), exactly where distribution checks them, so that error messages can
say which of those rules failed.

Every pattern is built from ASCII character classes only (Python's ``\\w`` would admit
any Unicode letter) and anchored with ``\\A ... \\Z`` (Python's ``$`` also matches
before a trailing newline, which would let ``"ubuntu\\n"`` through).
"""

from __future__ import annotations

import re


def literal(text: str) -> str:
    """Match ``text`` exactly, with every regex metacharacter escaped."""
    return re.escape(text)


def expression(*pieces: str) -> str:
    """Concatenate pieces into one expression."""
    return "".join(pieces)


def optional(*pieces: str) -> str:
    """Wrap the pieces in a non-capturing group that may be absent."""
    return f"(?:{expression(*pieces)})?"


def any_times(*pieces: str) -> str:
    """Wrap the pieces in a non-capturing group that may repeat zero or more times."""
    return f"(?:{expression(*pieces)})*"


def capture(*pieces: str) -> str:
    """Wrap the pieces in a capturing group."""
    return f"({expression(*pieces)})"


def anchored(*pieces: str) -> str:
    """Anchor the pieces at the very start and the very end of the string."""
    return rf"\A{expression(*pieces)}\Z"


# Lower-case letters and digits: the atoms of a repository path.
ALPHA_NUMERIC = r"[a-z0-9]+"

# One period, one or two underscores, or any number of dashes, between atoms.
SEPARATOR = r"(?:[._]|__|[-]+)"

# A path component starts and ends with an atom; separators only sit between atoms.
PATH_COMPONENT = expression(ALPHA_NUMERIC, any_times(SEPARATOR, ALPHA_NUMERIC))

# The repository path ("remote name"): slash-separated path components.
REMOTE_NAME = expression(PATH_COMPONENT, any_times(literal("/"), PATH_COMPONENT))

# One DNS label; upper case is allowed here (and only here) in a name.
DOMAIN_NAME_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"

# A dotted host name or a dotted-decimal IPv4 address.
DOMAIN_NAME = expression(DOMAIN_NAME_COMPONENT, any_times(literal("."), DOMAIN_NAME_COMPONENT))

# An IPv6 address in brackets; zone identifiers and IPv4-mapped forms are excluded.
IPV6_ADDRESS = expression(literal("["), r"(?:[a-fA-F0-9:]+)", literal("]"))

# The URI host: a domain name or a bracketed IPv6 address.
HOST = f"(?:{DOMAIN_NAME}|{IPV6_ADDRESS})"

# A decimal port number after a colon (its range is checked after matching).
OPTIONAL_PORT = optional(literal(":"), r"[0-9]+")

# The registry part of a name: host and optional port.
DOMAIN_AND_PORT = expression(HOST, OPTIONAL_PORT)

# A name: optional registry, then the repository path.
NAME = expression(optional(DOMAIN_AND_PORT, literal("/")), REMOTE_NAME)

# A tag: 1 to 128 word characters, dots and dashes, not starting with a dot or dash.
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"

# One word of a digest algorithm name, such as "sha256".
DIGEST_ALGORITHM_COMPONENT = r"[A-Za-z][A-Za-z0-9]*"

# What joins algorithm words, as in "sha256+b64" (reserved for future algorithms).
DIGEST_ALGORITHM_SEPARATOR = r"[-_+.]"

# A digest algorithm name.
DIGEST_ALGORITHM = expression(
    DIGEST_ALGORITHM_COMPONENT,
    any_times(DIGEST_ALGORITHM_SEPARATOR, DIGEST_ALGORITHM_COMPONENT),
)

# The encoded hash: at least 32 hex digits (128 bits); exact length is per algorithm.
DIGEST_HEX = r"[0-9a-fA-F]{32,}"

# A content digest such as "sha256:<64 hex digits>".
DIGEST = expression(DIGEST_ALGORITHM, literal(":"), DIGEST_HEX)

# A bare 64-hex image ID, which must not be mistaken for a repository name.
IDENTIFIER = r"[a-f0-9]{64}"

# A whole reference; groups: 1 name, 2 tag, 3 digest.
REFERENCE = anchored(
    capture(NAME),
    optional(literal(":"), capture(TAG)),
    optional(literal("@"), capture(DIGEST)),
)

# A name split into its parts; groups: 1 registry (or None), 2 repository path.
ANCHORED_NAME = anchored(optional(capture(DOMAIN_AND_PORT), literal("/")), capture(REMOTE_NAME))

# Compiled forms used by the parser. re.ASCII keeps every class strictly ASCII.
REFERENCE_RE = re.compile(REFERENCE, re.ASCII)
ANCHORED_NAME_RE = re.compile(ANCHORED_NAME, re.ASCII)
ANCHORED_TAG_RE = re.compile(anchored(TAG), re.ASCII)
ANCHORED_DIGEST_RE = re.compile(anchored(DIGEST), re.ASCII)
ANCHORED_DIGEST_ALGORITHM_RE = re.compile(anchored(DIGEST_ALGORITHM), re.ASCII)
ANCHORED_IDENTIFIER_RE = re.compile(anchored(IDENTIFIER), re.ASCII)
ANCHORED_DOMAIN_AND_PORT_RE = re.compile(anchored(DOMAIN_AND_PORT), re.ASCII)
ANCHORED_DOMAIN_NAME_COMPONENT_RE = re.compile(anchored(DOMAIN_NAME_COMPONENT), re.ASCII)
ANCHORED_PATH_COMPONENT_RE = re.compile(anchored(PATH_COMPONENT), re.ASCII)
ANCHORED_REMOTE_NAME_RE = re.compile(anchored(REMOTE_NAME), re.ASCII)
