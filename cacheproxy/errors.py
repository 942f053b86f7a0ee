"""Domain errors, each carrying the OCI distribution error code it maps to.

The codes and their statuses follow the OCI distribution spec, section
"Error Codes"; ``UNAVAILABLE`` is distribution's own code for an upstream that
cannot be reached.

Each is also the standard exception a caller would expect, as aiohttp's
``ClientOSError(ClientConnectionError, OSError)`` is an OSError:

- not found, LookupError: NameUnknown, ManifestUnknown, BlobUnknown, NotFound.
  LookupError, not KeyError: ``except KeyError`` guards dict and config look-ups
  in the package, and must not start taking a registry's answer for a missing key.
- bad input, ValueError: NameInvalid, DigestInvalid, ManifestInvalid, BadRequest,
  PayloadTooLarge, RangeNotSatisfiable, and UpstreamBadContent (bytes that are
  not what their digest or length says).
- refused, PermissionError: Unauthorized, Denied.
- unreachable, ConnectionError: UpstreamUnavailable, so CredentialsUnavailable and
  DestinationRefused too.
- this proxy's own disk, OSError: CacheWriteFailed.
- none: Unsupported, TooManyRequests and PreconditionFailed (no standard exception
  means "not offered here", "later" or "not the version you named"; an asyncio or
  aiohttp one would make a caller catch what is not its fault).

PermissionError and ConnectionError are OSErrors. Every ``except`` (and
``contextlib.suppress``) of OSError, ConnectionError, ValueError or LookupError in
the package was read for what its ``try`` can raise. Those guarding a file, a
socket option, a parser (json, ipaddress, dates, spans) or an aiohttp session (whose
resolver raises RefusedAddress, no domain error) see no domain error, before or now.
Three see one, and keep their meaning:

- ``http/handlers.py`` ``_send``: ConnectionError from the sink means the client went
  away (the fill goes on without it); a body's own failure mid-send (now a
  ConnectionError too, as UpstreamUnavailable) must still abort the connection, so
  RegistryError is caught first.
- ``commands/serve.py`` ``run``: an OSError at start is a port or the cache directory;
  a domain error passes on to ``cli.main`` as before.
- ``blobs/scheduler.py`` and ``blobs/fill.py`` test RegistryError before OSError (the
  lanes' BROKEN), so an upstream that fails is not resumed as a broken body, and the
  fill fails with the error it got.
"""

from __future__ import annotations

from collections.abc import Mapping


class RegistryError(Exception):
    """An error that is answered to the client as OCI error JSON."""

    code = "UNKNOWN"
    status = 500
    default_message = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.message)

    def to_json(self) -> dict[str, object]:
        """The error as one entry of the spec's ``errors`` array."""
        entry: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


class NameInvalid(RegistryError, ValueError):
    code, status, default_message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError, LookupError):
    code, status, default_message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class DigestInvalid(RegistryError, ValueError):
    code, status, default_message = "DIGEST_INVALID", 400, "provided digest did not match"


class ManifestInvalid(RegistryError, ValueError):
    code, status, default_message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(RegistryError, LookupError):
    code, status, default_message = "MANIFEST_UNKNOWN", 404, "manifest unknown"


class BlobUnknown(RegistryError, LookupError):
    code, status, default_message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class Unauthorized(RegistryError, PermissionError):
    code, status, default_message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError, PermissionError):
    code, status, default_message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, default_message = "UNSUPPORTED", 405, "the operation is unsupported"


class NotFound(RegistryError, LookupError):
    """A path the API does not define (answered in the same JSON shape)."""

    code, status, default_message = "NOT_FOUND", 404, "no such endpoint"


# The upstream's own answer that a repository may not have a digest (or that the
# proxy's login does not reach it): an answer about the pair, not a fault. The
# links remember it (links.py), and no counter moves for it differently from a
# confirmation's refusal: either tells nothing of what the cache holds.
REFUSALS = (BlobUnknown, ManifestUnknown, Unauthorized, Denied)


class RangeNotSatisfiable(RegistryError, ValueError):
    code, status, default_message = "RANGE_INVALID", 416, "requested range not satisfiable"


class PreconditionFailed(RegistryError):
    """If-Match named no entity tag the representation has (RFC 9110 section 13.1.1)."""

    code, status, default_message = "PRECONDITION_FAILED", 412, "precondition failed"


class TooManyRequests(RegistryError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class PayloadTooLarge(RegistryError, ValueError):
    code, status, default_message = "SIZE_INVALID", 413, "content exceeds the size limit"


class BadRequest(RegistryError, ValueError):
    code, status, default_message = "UNSUPPORTED", 400, "malformed request"


class UpstreamUnavailable(RegistryError, ConnectionError):
    """The upstream could not be reached or answered with a server error."""

    code, status, default_message = "UNAVAILABLE", 503, "upstream registry unavailable"
    #: The upstream's own status when it answered (a 5xx); None: it was not reached.
    answered: int | None = None


class CredentialsUnavailable(UpstreamUnavailable):
    """The upstream's login could not be had (an ECR token, say): retrying the request
    at once would only ask again for what just failed."""

    default_message = "upstream credentials unavailable"


class DestinationRefused(UpstreamUnavailable):
    """The upstream sent the proxy (a redirect, a token realm) to an address it does
    not dial (destinations.py, egress_deny): asking again gets the same answer, so it
    is not retried. 502: the upstream's answer is one the gateway will not follow."""

    status, default_message = 502, "upstream sent the proxy to an address it does not dial"


class CacheWriteFailed(RegistryError, OSError):
    """This proxy could not write a blob to its own disk (no source's fault)."""

    code, status, default_message = "UNAVAILABLE", 503, "the proxy could not write the blob"


class FilesExhausted(RegistryError, OSError):
    """The process has no file descriptor free (EMFILE, ENFILE) to open a blob or a
    connection for this request: a moment's shortage of its own, answered as a
    write to a full disk is (503: retry later), not as a fault of the proxy."""

    code, status, default_message = "UNAVAILABLE", 503, "the proxy has no file free now"


class UpstreamBadContent(RegistryError, ValueError):
    """The upstream sent bytes that do not match their digest or length."""

    code, status, default_message = "UNAVAILABLE", 502, "upstream sent invalid content"
