"""Allow/deny rules on normalized image names: the admin's allowlist.

A rule is ``HOST/PATHGLOB[:TAGGLOB]`` and is matched against the *normalized* reference
(``ubuntu`` is ``docker.io/library/ubuntu``), so no other spelling of a name reaches a different
decision:

- the host must match exactly (compared lower-case, as DNS does; ``index.docker.io`` in a rule
  means ``docker.io``, and ``docker.io/NAME`` means ``docker.io/library/NAME`` as in references);
- ``*`` matches within one path segment, ``**`` across segments; there is no prefix matching,
  so ``quay.io/pangeo/*`` never admits ``quay.io/pangeonot/x`` or ``quay.io/pangeo/a/b``;
- ``:TAGGLOB`` limits tags (``*`` matches any run of tag characters). A reference without tag or
  digest means ``:latest``; a reference pinned by digest alone has no tag, so tag-limited rules do
  not apply to it.

Deny wins over allow and whatever no allow rule admits is refused. :class:`PolicySet` adds
per-profile rules on top of the global ones. The checker runs this before any network call.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from imagewarden.errors import PolicyPatternError
from imagewarden.reference import Reference, canonical_host, canonicalize

_HOST_PATTERN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
    r"(?::[0-9]+)?"
)
_PATH_GLOB_PATTERN = re.compile(r"[a-z0-9._*-]+(?:/[a-z0-9._*-]+)*")
_TAG_GLOB_PATTERN = re.compile(r"[A-Za-z0-9_.*-]{1,128}")
_MAX_PATTERN_LENGTH = 512
_IMPLIED_TAG = "latest"
_ALLOWED_LIST_SHOWN = 5


_SEGMENT_RUN = "*"
_ANY_RUN = "**"
_WILDCARDS = frozenset({_SEGMENT_RUN, _ANY_RUN})


@dataclass(frozen=True)
class _Glob:
    """A compiled glob: ``*`` matches any run of characters except ``stop``, ``**`` any run.

    Matched by carrying the set of text positions reachable after each piece, so a match costs
    at most len(glob) × len(text) steps. (A regex translation backtracks exponentially: the
    rule ``quay.io/*a*a*a*a*b`` against a name of 200 ``a`` ran for minutes.)
    """

    pieces: tuple[str, ...]
    """Literal runs and the wildcards ``*`` and ``**``, in order."""
    stop: str
    """The character ``*`` does not cross (``/`` in paths); empty for none."""

    @classmethod
    def compile(cls, glob: str, *, stop: str) -> _Glob:
        pieces: list[str] = []
        for index, between_any in enumerate(glob.split(_ANY_RUN)):
            if index:
                pieces.append(_ANY_RUN)
            for inner, literal in enumerate(between_any.split(_SEGMENT_RUN)):
                if inner:
                    pieces.append(_SEGMENT_RUN)
                if literal:
                    pieces.append(literal)
        return cls(tuple(pieces), stop)

    def fullmatch(self, text: str) -> bool:
        positions = {0}
        for piece in self.pieces:
            if piece == _ANY_RUN:
                positions = set(range(min(positions), len(text) + 1))
            elif piece == _SEGMENT_RUN:
                reach: set[int] = set()
                for start in sorted(positions):
                    if start in reach:
                        continue  # same segment as an earlier start: nothing new to reach
                    stop_at = text.find(self.stop, start) if self.stop else -1
                    segment_end = len(text) if stop_at < 0 else stop_at
                    reach.update(range(start, segment_end + 1))
                positions = reach
            else:
                positions = {at + len(piece) for at in positions if text.startswith(piece, at)}
            if not positions:
                return False
        return len(text) in positions


def _policy_name(ref: Reference) -> tuple[str, str]:
    """Host and path as rules see them: the canonical spelling (:func:`canonicalize`), so
    ``Docker.IO/ubuntu`` and ``registry-1.docker.io/library/ubuntu`` meet the same rules as
    ``docker.io/library/ubuntu``."""
    canonical = canonicalize(ref)
    return canonical.domain, canonical.path


@dataclass(frozen=True)
class Rule:
    """One compiled allow/deny pattern."""

    pattern: str
    """The pattern as the admin wrote it (shown in reasons)."""
    host: str
    """Lower-case registry host, compared exactly."""
    path_glob: _Glob = field(compare=False)
    tag_glob: _Glob | None = field(compare=False)

    @property
    def limits_tags(self) -> bool:
        return self.tag_glob is not None

    def matches(self, ref: Reference) -> bool:
        host, path = _policy_name(ref)
        if host != self.host or not self.path_glob.fullmatch(path):
            return False
        if self.tag_glob is None:
            return True
        tag = ref.tag if ref.tag is not None else (None if ref.digest else _IMPLIED_TAG)
        return tag is not None and self.tag_glob.fullmatch(tag)


def compile_rule(pattern: str) -> Rule:
    """Compile ``HOST/PATHGLOB[:TAGGLOB]``; a bad pattern raises :class:`PolicyPatternError`."""
    if not isinstance(pattern, str):
        raise PolicyPatternError(f"a rule must be a string, not {type(pattern).__name__}")
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    if len(pattern) > _MAX_PATTERN_LENGTH:
        raise PolicyPatternError(
            f"{shown!r} is {len(pattern)} characters long; rules are at most "
            f"{_MAX_PATTERN_LENGTH} characters"
        )
    host, slash, rest = pattern.partition("/")
    if not slash or not rest:
        raise PolicyPatternError(
            f"{shown!r} has no path after the registry host; write e.g. {host or 'quay.io'}/org/* "
            f"or {host or 'quay.io'}/** for every repository"
        )
    host = host.lower()
    if not _HOST_PATTERN.fullmatch(host) or "*" in host:
        raise PolicyPatternError(
            f"{shown!r} does not start with a registry host such as quay.io or docker.io "
            "(hosts are matched exactly, without wildcards)"
        )
    if "." not in host and ":" not in host and host != "localhost":
        # Without this, deny: ["jupyter/*"] would compile to the host "jupyter", match nothing
        # and leave docker.io/jupyter/* allowed.
        raise PolicyPatternError(
            f"{shown!r} does not start with a registry host ({host!r} has no '.' or ':' and is "
            f"not localhost); rules name the registry, so for Docker Hub write docker.io/{shown}"
        )
    path_glob, colon, tag_glob = rest.partition(":")
    if not _PATH_GLOB_PATTERN.fullmatch(path_glob) or "***" in path_glob:
        raise PolicyPatternError(
            f"{shown!r} has an invalid repository glob {path_glob!r}; use lower-case letters, "
            "digits, '.', '_', '-', '/' and the wildcards * (one segment) and ** (any depth)"
        )
    tag_matcher = None
    if colon:
        if not _TAG_GLOB_PATTERN.fullmatch(tag_glob) or "***" in tag_glob:
            raise PolicyPatternError(
                f"{shown!r} has an invalid tag glob {tag_glob!r}; use tag characters "
                "(letters, digits, '_', '.', '-') and *"
            )
        tag_matcher = _Glob.compile(tag_glob, stop="")
    host = canonical_host(host)
    if host == "docker.io" and "/" not in path_glob and "**" not in path_glob:
        # Same normalization as references: docker.io/ubuntu is docker.io/library/ubuntu.
        path_glob = f"library/{path_glob}"
    return Rule(
        pattern=pattern,
        host=host,
        path_glob=_Glob.compile(path_glob, stop="/"),
        tag_glob=tag_matcher,
    )


class PolicyMode(enum.Enum):
    """How a profile's rules combine with the global ones."""

    EXTEND = "extend"
    """Profile rules are added to the global allow and deny lists (the default)."""
    REPLACE = "replace"
    """Only the profile's own rules apply."""


@dataclass(frozen=True)
class Decision:
    """The verdict of the policy for one reference."""

    allowed: bool
    rule: str | None
    """The pattern that decided, or None when no allow rule matched."""
    reason: str
    """One sentence for the person who typed the image."""


@dataclass(frozen=True)
class Policy:
    """Compiled allow and deny rules."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()

    @classmethod
    def from_patterns(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> Policy:
        return cls(
            allow=tuple(compile_rule(p) for p in allow), deny=tuple(compile_rule(p) for p in deny)
        )

    def decide(self, ref: Reference, *, profile: str | None = None) -> Decision:
        where = f" for the {profile} profile" if profile else ""
        name = str(ref)
        for rule in self.deny:
            if rule.matches(ref):
                advice = (
                    "choose another tag or pin a digest"
                    if rule.limits_tags
                    else "choose an image from another repository"
                )
                return Decision(
                    False,
                    rule.pattern,
                    f"{name} is blocked by the rule {rule.pattern}{where}; {advice}.",
                )
        for rule in self.allow:
            if rule.matches(ref):
                return Decision(True, rule.pattern, f"{name} is allowed by {rule.pattern}{where}.")
        if not self.allow:
            return Decision(False, None, f"{name} is refused: no images are allowed{where}.")
        shown = [rule.pattern for rule in self.allow[:_ALLOWED_LIST_SHOWN]]
        more = len(self.allow) - len(shown)
        listing = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        return Decision(
            False,
            None,
            f"{name} is not in the list of allowed images{where}; allowed: {listing}.",
        )


@dataclass(frozen=True)
class ProfilePolicy:
    """A profile's own rules and how they combine with the global policy."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    mode: PolicyMode = PolicyMode.EXTEND


@dataclass(frozen=True)
class PolicySet:
    """The global policy plus the effective policy of each profile, compiled once."""

    global_policy: Policy
    profile_policies: Mapping[str, Policy] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        allow: Iterable[str],
        deny: Iterable[str],
        profiles: Mapping[str, ProfilePolicy] | None = None,
    ) -> PolicySet:
        base = Policy.from_patterns(allow, deny)
        compiled: dict[str, Policy] = {}
        for name, profile in (profiles or {}).items():
            own = Policy.from_patterns(profile.allow, profile.deny)
            if profile.mode is PolicyMode.REPLACE:
                compiled[name] = own
            else:
                compiled[name] = Policy(base.allow + own.allow, base.deny + own.deny)
        return cls(base, compiled)

    def decide(self, ref: Reference, *, profile: str | None = None) -> Decision:
        policy = self.profile_policies.get(profile, self.global_policy) if profile else None
        return (policy or self.global_policy).decide(ref, profile=profile)
