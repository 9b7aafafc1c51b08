"""Docker Hub defaults: turn what people type into a fully qualified ``Reference``.

This module owns the one place that knows ``docker.io`` and ``library/``. It follows
docker/distribution's ``ParseNormalizedNamed``: a first segment is a registry host only
if it contains ``.`` or ``:``, is ``localhost``, or has an upper-case letter; anything
else is a Docker Hub name, and one-segment Hub names live under ``library/``. The
grammar itself and every refusal message come from ``parse.py``. The resulting
``Reference`` is what the policy (``imagewarden.policy``) matches and the registry
client resolves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import NamedTuple

from imagewarden.errors import InvalidReference
from imagewarden.reference import grammar
from imagewarden.reference.parse import (
    check_text,
    digest_problem,
    host_problem,
    host_without_repository,
    match_parts,
    refusal,
    show,
)

DEFAULT_DOMAIN = "docker.io"
"""Registry of names written without one (Docker Hub)."""

LEGACY_DEFAULT_DOMAIN = "index.docker.io"
"""Old name of Docker Hub's registry, rewritten to ``DEFAULT_DOMAIN``."""

OFFICIAL_REPO_PREFIX = "library/"
"""Docker Hub namespace of official images: ``ubuntu`` is ``library/ubuntu``."""

LOCALHOST = "localhost"
"""The one dot-less, port-less first segment that is always a registry host."""


class DockerDomainSplit(NamedTuple):
    """Where Docker's rules put the registry boundary in a typed reference."""

    domain: str
    """Registry host after defaults (``docker.io`` for Hub names)."""

    remainder: str
    """Path, tag and digest that follow the registry, with ``library/`` added when needed."""

    path_offset: int
    """Index in the typed text where the user's own path starts (0 when no registry was typed)."""


def split_docker_domain(text: str) -> DockerDomainSplit:
    """Split typed text into registry and the rest by Docker's rules (no validation)."""
    first, slash, rest = text.partition("/")
    if not slash:
        return DockerDomainSplit(DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + text, 0)
    if first == LEGACY_DEFAULT_DOMAIN:
        domain, remainder, offset = DEFAULT_DOMAIN, rest, len(first) + 1
    elif first == LOCALHOST or "." in first or ":" in first or first != first.lower():
        domain, remainder, offset = first, rest, len(first) + 1
    else:
        domain, remainder, offset = DEFAULT_DOMAIN, text, 0
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return DockerDomainSplit(domain, remainder, offset)


def _path_part(text: str) -> str:
    """The path at the start of ``text``: everything before the first ``:`` or ``@``."""
    end = len(text)
    for marker in ":@":
        index = text.find(marker)
        if 0 <= index < end:
            end = index
    return text[:end]


@dataclass(frozen=True, slots=True)
class Reference:
    """A fully qualified image reference: ``domain/path[:tag][@digest]``.

    Build it with :func:`parse`. It is immutable and hashable, so it serves as a cache
    key; two spellings of one image (``ubuntu``, ``docker.io/library/ubuntu``) give
    equal references.
    """

    domain: str
    """Registry host and optional port, e.g. ``quay.io``, ``docker.io``, ``[::1]:5000``."""

    path: str
    """Repository path on that registry, e.g. ``library/ubuntu``."""

    tag: str | None = None
    """Tag as written, or ``None``; no ``latest`` is implied here."""

    digest: str | None = None
    """Content digest ``algorithm:hex``, or ``None``."""

    @property
    def name(self) -> str:
        """Registry and path: ``docker.io/library/ubuntu``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        """The full normalized form, without an implied ``:latest``."""
        return self.name + self._suffix()

    @property
    def familiar_name(self) -> str:
        """The name as Docker prints it: ``ubuntu``, ``jupyter/base``, ``quay.io/x/y``.

        Unlike distribution, ``docker.io`` is kept when dropping it would change the
        meaning (``docker.io/foo.bar/x`` would read as registry ``foo.bar``), so that
        parsing the familiar form always gives this reference back.
        """
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_REPO_PREFIX):
            official = self.path[len(OFFICIAL_REPO_PREFIX) :]
            if "/" not in official and grammar.ANCHORED_IDENTIFIER_RE.match(official) is None:
                return official
        first = self.path.partition("/")[0]
        if "/" not in self.path or first in (LOCALHOST, LEGACY_DEFAULT_DOMAIN) or "." in first:
            return self.name
        return self.path

    @property
    def familiar(self) -> str:
        """The short form people type: ``ubuntu:22.04``, ``quay.io/x/y:t``, ``myuser/img``."""
        return self.familiar_name + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        """The same name and tag, pinned to ``digest``; raises ``InvalidReference``."""
        return dataclasses.replace(self, digest=_checked_digest(digest))

    def pinned(self, digest: str | None = None) -> str:
        """``name@digest``: what a pod should pull. Uses this reference's own digest
        when ``digest`` is not given; raises ``InvalidReference`` if there is none."""
        chosen = self.digest if digest is None else _checked_digest(digest)
        if chosen is None:
            raise InvalidReference(
                f"{show(str(self))} has no digest to pin to; resolve it first or pass the digest."
            )
        return f"{self.name}@{chosen}"

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        return tag + (f"@{self.digest}" if self.digest is not None else "")


def _checked_digest(digest: str) -> str:
    problem = digest_problem(digest) if isinstance(digest, str) else "it is not a string"
    if problem is not None:
        raise InvalidReference(f"{show(str(digest))} is not a valid digest: {problem}.")
    return digest


def parse(text: str) -> Reference:
    """Parse what a person typed into a normalized ``Reference`` (``ParseNormalizedNamed``).

    ``ubuntu`` becomes ``docker.io/library/ubuntu``, ``index.docker.io/x/y`` becomes
    ``docker.io/x/y``. Raises ``InvalidReference`` whose message names the broken rule
    and the fix. Surrounding whitespace is refused, not stripped.
    """
    check_text(text)
    if grammar.ANCHORED_IDENTIFIER_RE.match(text) is not None:
        raise refusal(
            text,
            "a repository name cannot be a 64-character hexadecimal string (cannot specify "
            "64-byte hexadecimal strings); that looks like an image ID, so give the image "
            "name instead, optionally with '@sha256:' and the ID",
        )
    problem = host_without_repository(text)
    if problem is not None:
        raise refusal(text, problem)
    split = split_docker_domain(text)
    typed_path = _path_part(text[split.path_offset :])
    if typed_path == "":
        raise refusal(
            text,
            "the repository path is missing after the registry; add it, as in "
            "'quay.io/jupyter/base-notebook'"
            if split.path_offset
            else "the image name is missing; a reference starts with a name such as 'ubuntu'",
        )
    lowered = typed_path.lower()
    if typed_path != lowered and grammar.ANCHORED_REMOTE_NAME_RE.match(lowered) is not None:
        start = split.path_offset
        fixed = text[:start] + lowered + text[start + len(typed_path) :]
        raise refusal(
            text,
            f"the repository path {show(typed_path)} contains upper-case letters, but "
            f"repository paths must be lower-case; write {show(fixed)}",
        )
    parts = match_parts(f"{split.domain}/{split.remainder}", shown=text)
    if parts.domain != split.domain:
        reason = host_problem(split.domain) or "it is not a valid host name"
        raise refusal(
            text,
            f"{show(split.domain)} is read as the registry host because it contains '.' or "
            f"':' or an upper-case letter, but {reason}",
        )
    return Reference(domain=split.domain, path=parts.path, tag=parts.tag, digest=parts.digest)


def parse_canonical(text: str) -> Reference:
    """Parse only the canonical form, as written by ``str(Reference)``.

    Like distribution's ``ParseNamed``: ``ubuntu``, ``docker.io/ubuntu`` and
    ``index.docker.io/library/ubuntu`` are refused with a message giving the canonical
    spelling ``docker.io/library/ubuntu``. Use it for configuration written by admins
    and for values this program wrote itself.
    """
    reference = parse(text)
    canonical = str(reference)
    if canonical != text:
        raise refusal(
            text,
            f"it is not in canonical form (registry and full path); write it as {show(canonical)}",
        )
    return reference


DOCKER_HUB_ALIASES = frozenset({LEGACY_DEFAULT_DOMAIN, "registry-1.docker.io"})
"""Other host names of Docker Hub that people paste."""


def canonical_host(host: str) -> str:
    """``host`` as policy, ``registries:`` keys and the registry client see it: lower-case (DNS
    is case-insensitive) and Docker Hub's other names as ``docker.io``."""
    host = host.lower()
    return DEFAULT_DOMAIN if host in DOCKER_HUB_ALIASES else host


def canonicalize(ref: Reference) -> Reference:
    """The one spelling of ``ref``'s repository: canonical host, ``library/`` for Hub images.

    :func:`parse` keeps ``Docker.IO/ubuntu`` apart from ``docker.io/library/ubuntu``, as
    distribution does, yet both name the same repository; the checker decides on, and pins,
    this form so the pod pulls exactly what was judged.
    """
    host = canonical_host(ref.domain)
    if host == ref.domain:
        return ref
    path = ref.path
    if host == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return replace(ref, domain=host, path=path)
