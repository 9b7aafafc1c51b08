"""Async OCI distribution client: resolve a reference to what a node will pull.

One :class:`RegistryClient` (one aiohttp ``ClientSession``) per process. A resolution is:

1. ``HEAD /v2/NAME/manifests/REF`` with the full Accept list; the digest comes from
   ``Docker-Content-Digest`` (Docker Hub does not count HEADs against the pull limit). If HEAD
   gives no digest, fall back to GET and hash the body, and log the fallback.
2. ``GET`` the manifest by digest (once per digest: digests are immutable, so the answer is kept),
   verifying that the body hashes to the digest. An index yields the platforms and the entry for
   the wanted platform, whose manifest is fetched the same way to sum the layer sizes.
3. Errors become :class:`~imagewarden.errors.RegistryError` subclasses with a sentence for the
   user: a 401 on an anonymous request "does not exist or is private"; a missing tag names the
   closest existing tags; a 429 is retried after ``Retry-After`` while the time budget allows.

Auth: on a 401 the ``WWW-Authenticate`` challenge is answered (Bearer token from the realm,
anonymous or with the host's credentials, or Basic) and the request retried once; tokens are
cached per scope and attached up front next time. ``Authorization`` goes only to the registry's
own origin: redirects elsewhere (blob storage) are followed without it.
The checker (:mod:`imagewarden.checker`) adds caching, single-flight and the time budget.
"""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import email.utils
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

import imagewarden
from imagewarden._lru import LRUCache
from imagewarden.config import DEFAULT_SETTINGS, Settings
from imagewarden.errors import (
    CredentialsRefusedError,
    InvalidRegistryResponseError,
    PlatformNotFoundError,
    RateLimitedError,
    RegistryError,
    RegistryUnreachableError,
    RepositoryNotFoundError,
    TagNotFoundError,
    UnsupportedManifestError,
)
from imagewarden.metrics import Metrics
from imagewarden.reference import Reference, canonical_host
from imagewarden.registry import manifest as mf
from imagewarden.registry.auth import (
    Challenge,
    Credentials,
    CredentialStore,
    TokenCache,
    TokenKey,
    parse_challenges,
    parse_token_response,
)
from imagewarden.registry.hosts import endpoint_for, same_origin

log = logging.getLogger(__name__)

USER_AGENT = f"imagewarden/{imagewarden.__version__}"
MAX_REDIRECTS = 5
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_TAG_PAGES = 5
TAG_PAGE_SIZE = 1000
MAX_RATE_LIMIT_RETRIES = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "imagewarden_registry_deadline", default=None
)
"""Monotonic time by which the current check must be answered; Retry-After waits fit inside it."""


@dataclass(frozen=True)
class Resolution:
    """What a node pulling ``reference`` gets."""

    reference: Reference
    digest: str
    """Digest of the top-level manifest (the index for multi-arch images): what the pod pins."""
    media_type: str
    platform_digest: str
    """Digest of the manifest for the selected platform."""
    platforms: tuple[str, ...]
    """Every platform the image offers (attestation entries left out)."""
    size_bytes: int
    """Compressed size of the selected platform's config and layers."""


@dataclass(frozen=True)
class _Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


def _error_codes(body: bytes) -> tuple[str, ...]:
    try:
        document = json.loads(body[:MAX_ERROR_BODY_BYTES])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ()
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(item["code"]) for item in errors if isinstance(item, dict) and "code" in item)[
        :10
    ]


def _retry_after_seconds(value: str | None, *, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _ratelimit_remaining(value: str | None) -> float | None:
    """``RateLimit-Remaining: 76;w=21600`` (Docker Hub) → 76."""
    if not value:
        return None
    head = value.split(";")[0].strip()
    return float(head) if head.isdigit() else None


class RegistryClient:
    """Resolves references against registries; use ``async with`` to own the HTTP session."""

    def __init__(
        self,
        settings: Settings = DEFAULT_SETTINGS,
        *,
        session: aiohttp.ClientSession | None = None,
        metrics: Metrics | None = None,
        request_timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.credentials = CredentialStore(settings.registries, settings.credentials)
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_seconds, connect=min(5.0, request_timeout_seconds)
        )
        self._clock = clock
        self._tokens = TokenCache(clock=clock)
        self._bearer_challenges: dict[str, Challenge] = {}
        self._documents: LRUCache[tuple[str, ...], Any] = LRUCache(settings.checker.cache_entries)

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
                trust_env=False,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient is not open; use `async with RegistryClient(...)`")
        return self._session

    def credentials_for(self, host: str) -> tuple[str, str] | None:
        """(username, password) for engines that pull from ``host`` themselves (the agent)."""
        found = self.credentials.for_host(host.lower())
        return (found.username, found.password) if found else None

    # --- public operations ----------------------------------------------------------------

    async def resolve(self, ref: Reference, *, platform: str = "linux/amd64") -> Resolution:
        registry = canonical_host(ref.domain)
        wanted = mf.Platform.parse(platform)
        reference = ref.digest or ref.tag or "latest"
        top_digest, header_type = await self._head_manifest(registry, ref, reference)
        if ref.digest and top_digest != ref.digest:
            raise InvalidRegistryResponseError(
                f"{registry} answered {ref.digest[:19]}… with a different digest; refusing.",
                registry=registry,
            )
        if header_type in mf.SCHEMA1_TYPES:
            mf.refuse_schema1(header_type, registry=registry, name=str(ref))
        document, media_type = await self._manifest(registry, ref, top_digest)
        mf.refuse_schema1(media_type, registry=registry, name=str(ref))
        if media_type in mf.INDEX_TYPES:
            entries = mf.parse_index(document, registry=registry)
            platforms = tuple(str(p) for p in mf.runnable_platforms(entries))
            entry = mf.select_platform(entries, wanted)
            if entry is None:
                raise PlatformNotFoundError(
                    f"{ref.familiar} is not built for {wanted} (it offers "
                    f"{', '.join(platforms) or 'no runnable platform'}), so it cannot run on "
                    "this profile's nodes; pick an image built for "
                    f"{wanted}.",
                    registry=registry,
                    platforms=platforms,
                )
            platform_document, platform_type = await self._manifest(registry, ref, entry.digest)
            mf.refuse_schema1(platform_type, registry=registry, name=str(ref))
            image = mf.parse_image_manifest(platform_document, registry=registry)
            return Resolution(
                ref, top_digest, media_type, entry.digest, platforms, image.size_bytes
            )
        if media_type in mf.IMAGE_TYPES:
            image = mf.parse_image_manifest(document, registry=registry)
            found = await self._config_platform(registry, ref, image.config_digest)
            platforms = (str(found),) if found else ()
            if found is not None and not found.satisfies(wanted):
                raise PlatformNotFoundError(
                    f"{ref.familiar} is built only for {found}, so it cannot run on this "
                    f"profile's {wanted} nodes; pick an image built for {wanted}.",
                    registry=registry,
                    platforms=platforms,
                )
            return Resolution(ref, top_digest, media_type, top_digest, platforms, image.size_bytes)
        raise UnsupportedManifestError(
            f"{ref.familiar} has a manifest of type {media_type[:80]!r}, which is not a "
            "container image that nodes can run.",
            registry=registry,
        )

    async def list_tags(self, ref: Reference, *, max_pages: int = MAX_TAG_PAGES) -> list[str]:
        """Tags of the repository, following ``Link`` pages up to ``max_pages``."""
        registry = canonical_host(ref.domain)
        base = endpoint_for(registry, self.settings.registries)
        url: URL | None = base / "v2" / ref.path / "tags" / "list" % {"n": str(TAG_PAGE_SIZE)}
        tags: list[str] = []
        for _ in range(max_pages):
            if url is None:
                break
            response = await self._get_ok(registry, ref, url, what="tag list")
            document = mf.load_json(response.body, registry=registry, what="tag list")
            page = document.get("tags") or []
            if not isinstance(page, list):
                break
            tags.extend(tag for tag in page if isinstance(tag, str))
            url = self._next_page(base, response.headers.get("Link"))
        return tags

    # --- manifest steps --------------------------------------------------------------------

    def _manifest_url(self, registry: str, ref: Reference, reference: str) -> URL:
        return (
            endpoint_for(registry, self.settings.registries)
            / "v2"
            / ref.path
            / "manifests"
            / (reference)
        )

    async def _head_manifest(
        self, registry: str, ref: Reference, reference: str
    ) -> tuple[str, str | None]:
        url = self._manifest_url(registry, ref, reference)
        scope = f"repository:{ref.path}:pull"
        response = await self._request(
            registry, "HEAD", url, scope=scope, accept=mf.ACCEPT, max_body_bytes=0
        )
        if response.status == 200:
            digest = response.headers.get("Docker-Content-Digest")
            content_type = response.headers.get("Content-Type")
            if digest and mf.is_digest(digest):
                return digest, content_type.split(";")[0].strip() if content_type else None
            log.warning("HEAD %s gave no digest, falling back on GET", url)
        elif response.status in (401, 403, 404, 429) or response.status >= 500:
            # Definite answers: a GET would only repeat them (and count against pull limits).
            raise await self._manifest_error(registry, ref, reference, response)
        else:
            log.warning("HEAD %s answered %d, falling back on GET", url, response.status)
        response = await self._request(
            registry,
            "GET",
            url,
            scope=scope,
            accept=mf.ACCEPT,
            max_body_bytes=mf.MAX_MANIFEST_BYTES,
        )
        if response.status != 200:
            raise await self._manifest_error(registry, ref, reference, response)
        digest = mf.compute_digest(response.body)
        header_digest = response.headers.get("Docker-Content-Digest")
        if header_digest and header_digest != digest and header_digest.startswith("sha256:"):
            raise InvalidRegistryResponseError(
                f"{registry} sent a manifest whose content does not match its digest "
                f"{header_digest[:23]}…; the image cannot be trusted, so it is refused.",
                registry=registry,
            )
        document = mf.load_json(response.body, registry=registry, what="manifest")
        media_type = mf.media_type_of(document, response.headers.get("Content-Type"))
        self._documents.put((registry, ref.path, digest), (document, media_type))
        return digest, media_type

    async def _manifest(
        self, registry: str, ref: Reference, digest: str
    ) -> tuple[dict[str, Any], str]:
        cached = self._documents.get((registry, ref.path, digest))
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        response = await self._request(
            registry,
            "GET",
            self._manifest_url(registry, ref, digest),
            scope=f"repository:{ref.path}:pull",
            accept=mf.ACCEPT,
            max_body_bytes=mf.MAX_MANIFEST_BYTES,
        )
        if response.status != 200:
            raise await self._manifest_error(registry, ref, digest, response)
        mf.verify_digest(response.body, digest, registry=registry)
        document = mf.load_json(response.body, registry=registry, what="manifest")
        result = (document, mf.media_type_of(document, response.headers.get("Content-Type")))
        self._documents.put((registry, ref.path, digest), result)
        return result

    async def _config_platform(
        self, registry: str, ref: Reference, digest: str
    ) -> mf.Platform | None:
        key = (registry, ref.path, digest, "platform")
        cached = self._documents.get(key)
        if cached is not None:
            return cached if isinstance(cached, mf.Platform) else None
        url = endpoint_for(registry, self.settings.registries) / "v2" / ref.path / "blobs" / digest
        response = await self._get_ok(registry, ref, url, what="image configuration")
        mf.verify_digest(response.body, digest, registry=registry)
        platform = mf.platform_of_config(
            mf.load_json(response.body, registry=registry, what="image configuration")
        )
        self._documents.put(key, platform or "unknown")
        return platform

    async def _get_ok(self, registry: str, ref: Reference, url: URL, *, what: str) -> _Response:
        """GET a small JSON document of ``ref``'s repository; anything but 200 is an error."""
        response = await self._request(
            registry,
            "GET",
            url,
            scope=f"repository:{ref.path}:pull",
            max_body_bytes=mf.MAX_MANIFEST_BYTES,
        )
        if response.status != 200:
            raise self._status_error(registry, ref, response, what=what)
        return response

    async def _manifest_error(
        self, registry: str, ref: Reference, reference: str, response: _Response
    ) -> RegistryError:
        codes = _error_codes(response.body)
        if response.status == 404 and "NAME_UNKNOWN" not in codes:
            if reference.startswith("sha"):
                return TagNotFoundError(
                    f"{ref.familiar} does not exist: the repository has no manifest with that "
                    "digest; check the digest you copied.",
                    registry=registry,
                    status=404,
                    codes=codes,
                )
            return await self._tag_missing(registry, ref, reference, codes)
        return self._status_error(registry, ref, response, what="manifest")

    async def _tag_missing(
        self, registry: str, ref: Reference, tag: str, codes: tuple[str, ...]
    ) -> RegistryError:
        try:
            tags = await self.list_tags(ref)
        except RepositoryNotFoundError as error:
            return error
        except RegistryError:
            tags = []
        suggestions = tuple(difflib.get_close_matches(tag, tags, n=3, cutoff=0.5))
        name = ref.familiar_name
        hint = (
            "did you mean " + " or ".join(suggestions) + "?"
            if suggestions
            else "check the tag on the registry's web page."
        )
        return TagNotFoundError(
            f"{name} has no tag {tag!r}; {hint}",
            registry=registry,
            status=404,
            codes=codes,
            suggestions=suggestions,
        )

    def _status_error(
        self, registry: str, ref: Reference, response: _Response, *, what: str
    ) -> RegistryError:
        status = response.status
        codes = _error_codes(response.body)
        name = ref.familiar
        if status == 404 or "NAME_UNKNOWN" in codes:
            return RepositoryNotFoundError(
                f"{name}: the repository {ref.domain}/{ref.path} does not exist; check the "
                "spelling of the organisation and image name.",
                registry=registry,
                status=status,
                codes=codes,
            )
        if status in (401, 403):
            if self.credentials.for_host(registry) is None:
                return RepositoryNotFoundError(
                    f"{name} does not exist or is private: {registry} would not show it without "
                    "logging in; check the spelling, or ask an administrator to add credentials "
                    "if it is private.",
                    registry=registry,
                    status=status,
                    codes=codes,
                )
            return CredentialsRefusedError(
                f"{name} does not exist, or the hub's credentials for {registry} may not read "
                "it; check the spelling, or ask an administrator to check the credentials.",
                registry=registry,
                status=status,
                codes=codes,
            )
        if status == 429:
            return RateLimitedError(
                f"{registry} is rate-limiting requests right now; try again in a minute.",
                registry=registry,
                status=status,
                codes=codes,
                temporary=True,
            )
        temporary = status >= 500 or status in RegistryError.temporary_statuses
        return RegistryError(
            f"{registry} answered {status} when asked for the {what}"
            + ("; it may be having problems, try again shortly." if temporary else "."),
            registry=registry,
            status=status,
            codes=codes,
            temporary=temporary,
        )

    @staticmethod
    def _next_page(base: URL, link: str | None) -> URL | None:
        if not link or 'rel="next"' not in link:
            return None
        target = link.split(";")[0].strip().strip("<>")
        url = base.join(URL(target))
        return url if same_origin(url, base) else None

    # --- HTTP with auth, redirects, rate limits -------------------------------------------

    async def _request(
        self,
        registry: str,
        method: str,
        url: URL,
        *,
        scope: str,
        accept: str | None = None,
        max_body_bytes: int,
    ) -> _Response:
        origin = endpoint_for(registry, self.settings.registries)
        authorization = self._cached_authorization(registry, scope)
        retried_auth = False
        rate_limit_retries = 0
        while True:
            response = await self._send_following_redirects(
                registry,
                method,
                url,
                origin=origin,
                authorization=authorization,
                accept=accept,
                max_body_bytes=max_body_bytes,
            )
            if response.status == 401 and not retried_auth:
                retried_auth = True
                fresh = await self._answer_challenge(registry, response, scope)
                if fresh is not None and fresh != authorization:
                    authorization = fresh
                    continue
            if response.status == 429 and rate_limit_retries < MAX_RATE_LIMIT_RETRIES:
                wait = _retry_after_seconds(response.headers.get("Retry-After"), now=time.time())
                if wait is not None and self._fits_budget(wait):
                    rate_limit_retries += 1
                    log.info("%s rate-limited %s; retrying after %.1fs", registry, method, wait)
                    await asyncio.sleep(wait)
                    continue
            return response

    def _fits_budget(self, wait_seconds: float) -> bool:
        limit = deadline.get()
        remaining = (limit - self._clock()) if limit is not None else 30.0
        return wait_seconds < remaining - 0.05

    def _cached_authorization(self, registry: str, scope: str) -> str | None:
        challenge = self._bearer_challenges.get(registry)
        if challenge is None:
            return None
        token = self._tokens.get(self._token_key(registry, challenge, scope))
        return f"Bearer {token}" if token else None

    def _token_key(self, registry: str, challenge: Challenge, scope: str) -> TokenKey:
        credentials = self.credentials.for_host(registry)
        return (
            challenge.params.get("realm", ""),
            challenge.params.get("service", ""),
            scope,
            credentials.username if credentials else "",
        )

    async def _answer_challenge(self, registry: str, response: _Response, scope: str) -> str | None:
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        bearer = next((c for c in challenges if c.scheme == "bearer" and "realm" in c.params), None)
        credentials = self.credentials.for_host(registry)
        if bearer is not None:
            self._bearer_challenges[registry] = bearer
            key = self._token_key(registry, bearer, scope)
            self._tokens.discard(key)
            token, expires_at = await self._fetch_token(registry, bearer, scope, credentials)
            self._tokens.put(key, token, expires_at)
            return f"Bearer {token}"
        if credentials is not None and any(c.scheme == "basic" for c in challenges):
            return credentials.basic_header()
        return None

    async def _fetch_token(
        self, registry: str, challenge: Challenge, scope: str, credentials: Credentials | None
    ) -> tuple[str, float]:
        try:
            realm = URL(challenge.params["realm"])
        except ValueError:
            realm = URL()
        origin = endpoint_for(registry, self.settings.registries)
        if realm.scheme not in ("http", "https") or not realm.host:
            raise InvalidRegistryResponseError(
                f"{registry} asked for a token from an invalid address.", registry=registry
            )
        if credentials is not None and realm.scheme == "http" and origin.scheme == "https":
            raise InvalidRegistryResponseError(
                f"{registry} asked for credentials over plain HTTP; they were not sent.",
                registry=registry,
            )
        # The registry's challenge scope comes first: some token services read only the first.
        scopes = [s for s in (challenge.params.get("scope"), scope) if s]
        query: list[tuple[str, str]] = [("scope", s) for s in dict.fromkeys(scopes)]
        if "service" in challenge.params:
            query.insert(0, ("service", challenge.params["service"]))
        headers = {"Authorization": credentials.basic_header()} if credentials else {}
        started = time.perf_counter()
        status = "error"
        try:
            async with self.session.get(
                realm.extend_query(query),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = str(response.status)
                body = await self._read_body(registry, response, 64 * 1024)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RegistryUnreachableError(
                f"the token service of {registry} could not be reached "
                f"({type(error).__name__}); try again shortly.",
                registry=registry,
                temporary=True,
            ) from None
        finally:
            self._observe(registry, "GET", status, started)
        if response.status in (401, 403):
            raise CredentialsRefusedError(
                f"the token service of {registry} refused the hub's credentials; ask an "
                "administrator to check them.",
                registry=registry,
                status=response.status,
            )
        if response.status != 200:
            raise RegistryError(
                f"the token service of {registry} answered {response.status}; try again shortly.",
                registry=registry,
                status=response.status,
            )
        return parse_token_response(body, registry=registry, now=self._clock())

    async def _send_following_redirects(
        self,
        registry: str,
        method: str,
        url: URL,
        *,
        origin: URL,
        authorization: str | None,
        accept: str | None,
        max_body_bytes: int,
    ) -> _Response:
        for _ in range(MAX_REDIRECTS + 1):
            headers: dict[str, str] = {}
            if accept:
                headers["Accept"] = accept
            if authorization and same_origin(url, origin):
                headers["Authorization"] = authorization
            started = time.perf_counter()
            status = "error"
            try:
                async with self.session.request(
                    method, url, headers=headers, allow_redirects=False, timeout=self._timeout
                ) as response:
                    status = str(response.status)
                    self._record_rate_limit(registry, response.headers)
                    location = response.headers.get("Location")
                    if response.status in _REDIRECT_STATUSES and location:
                        await self._read_body(registry, response, MAX_ERROR_BODY_BYTES, drain=True)
                        url = url.join(URL(location))
                        if url.scheme not in ("http", "https"):
                            break
                        continue
                    limit = max_body_bytes if response.status == 200 else MAX_ERROR_BODY_BYTES
                    body = (
                        b""
                        if method == "HEAD"
                        else await self._read_body(
                            registry, response, limit, drain=response.status != 200
                        )
                    )
                    return _Response(response.status, response.headers, body, url)
            except (aiohttp.ClientError, TimeoutError) as error:
                raise RegistryUnreachableError(
                    f"{registry} could not be reached ({self._describe(error)}); "
                    "try again shortly.",
                    registry=registry,
                    temporary=True,
                ) from None
            finally:
                self._observe(registry, method, status, started)
        raise InvalidRegistryResponseError(
            f"{registry} sent more than {MAX_REDIRECTS} redirects (or a redirect loop); "
            "it may be misconfigured.",
            registry=registry,
            temporary=True,
        )

    @staticmethod
    def _describe(error: BaseException) -> str:
        if isinstance(error, TimeoutError | asyncio.TimeoutError):
            return "no answer in time"
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return "its TLS certificate is not trusted"
        if isinstance(error, aiohttp.ClientSSLError):
            return "the TLS handshake failed; check that the endpoint speaks https"
        if isinstance(error, aiohttp.ClientConnectorDNSError):
            return "its name does not resolve"
        if isinstance(error, aiohttp.ClientConnectorError):
            return "connection refused"
        if isinstance(
            error,
            aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError,
        ):
            return "the connection broke off"
        if isinstance(error, aiohttp.ClientResponseError):
            return "its answer was not HTTP"
        return type(error).__name__

    async def _read_body(
        self,
        registry: str,
        response: aiohttp.ClientResponse,
        limit: int,
        *,
        drain: bool = False,
    ) -> bytes:
        declared = response.content_length
        if declared is not None and declared > limit and not drain:
            raise InvalidRegistryResponseError(
                f"{registry} sent a manifest of {declared} bytes, over the {limit}-byte limit.",
                registry=registry,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                if drain:
                    return b"".join(chunks)
                raise InvalidRegistryResponseError(
                    f"{registry} sent a manifest over the {limit}-byte limit.", registry=registry
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _record_rate_limit(self, registry: str, headers: Mapping[str, str]) -> None:
        remaining = _ratelimit_remaining(headers.get("RateLimit-Remaining"))
        if remaining is not None:
            self.metrics.registry_ratelimit_remaining.labels(registry=registry).set(remaining)

    def _observe(self, registry: str, method: str, status: str, started: float) -> None:
        self.metrics.registry_requests_total.labels(
            registry=registry, method=method, status=status
        ).inc()
        self.metrics.registry_request_duration_seconds.labels(registry=registry).observe(
            time.perf_counter() - started
        )
