"""Domain errors, each carrying the OCI distribution error code it maps to.

The codes and their statuses follow the OCI distribution spec, section
"Error Codes"; ``UNAVAILABLE`` is distribution's own code for an upstream that
cannot be reached.
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


class NameInvalid(RegistryError):
    code, status, default_message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, default_message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class DigestInvalid(RegistryError):
    code, status, default_message = "DIGEST_INVALID", 400, "provided digest did not match"


class ManifestInvalid(RegistryError):
    code, status, default_message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(RegistryError):
    code, status, default_message = "MANIFEST_UNKNOWN", 404, "manifest unknown"


class BlobUnknown(RegistryError):
    code, status, default_message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class Unauthorized(RegistryError):
    code, status, default_message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError):
    code, status, default_message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, default_message = "UNSUPPORTED", 405, "the operation is unsupported"


class NotFound(RegistryError):
    """A path the API does not define (answered in the same JSON shape)."""

    code, status, default_message = "NOT_FOUND", 404, "no such endpoint"


# The upstream's own answer that a repository may not have a digest (or that the
# proxy's login does not reach it): an answer about the pair, not a fault. The
# links remember it (links.py), and no counter moves for it differently from a
# confirmation's refusal: either tells nothing of what the cache holds.
REFUSALS = (BlobUnknown, ManifestUnknown, Unauthorized, Denied)


class RangeNotSatisfiable(RegistryError):
    code, status, default_message = "RANGE_INVALID", 416, "requested range not satisfiable"


class TooManyRequests(RegistryError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class PayloadTooLarge(RegistryError):
    code, status, default_message = "SIZE_INVALID", 413, "content exceeds the size limit"


class BadRequest(RegistryError):
    code, status, default_message = "UNSUPPORTED", 400, "malformed request"


class UpstreamUnavailable(RegistryError):
    """The upstream could not be reached or answered with a server error."""

    code, status, default_message = "UNAVAILABLE", 503, "upstream registry unavailable"


class CredentialsUnavailable(UpstreamUnavailable):
    """The upstream's login could not be had (an ECR token, say): retrying the request
    at once would only ask again for what just failed."""

    default_message = "upstream credentials unavailable"


class DestinationRefused(UpstreamUnavailable):
    """The upstream sent the proxy (a redirect, a token realm) to an address it does
    not dial (destinations.py, egress_deny): asking again gets the same answer, so it
    is not retried. 502: the upstream's answer is one the gateway will not follow."""

    status, default_message = 502, "upstream sent the proxy to an address it does not dial"


class CacheWriteFailed(RegistryError):
    """This proxy could not write a blob to its own disk (no source's fault)."""

    code, status, default_message = "UNAVAILABLE", 503, "the proxy could not write the blob"


class FilesExhausted(RegistryError):
    """The process has no file descriptor free (EMFILE, ENFILE) to open a blob or a
    connection for this request: a moment's shortage of its own, answered as a
    write to a full disk is (503: retry later), not as a fault of the proxy."""

    code, status, default_message = "UNAVAILABLE", 503, "the proxy has no file free now"


class UpstreamBadContent(RegistryError):
    """The upstream sent bytes that do not match their digest or length."""

    code, status, default_message = "UNAVAILABLE", 502, "upstream sent invalid content"
