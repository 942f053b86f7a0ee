"""cosign signatures, verified: pure functions over bytes and public keys.

Two shapes, as cosign writes them:

- cosign 2 (a ``sha256-<hex>.sig`` tag): each layer of that manifest is a "simple
  signing" payload (``application/vnd.dev.cosign.simplesigning.v1+json``), JSON whose
  ``critical.image.docker-manifest-digest`` names the signed manifest and whose
  ``critical.type`` is ``cosign container image signature``; the layer's annotation
  ``dev.cosignproject.cosign/signature`` is the base64 signature over the payload's
  bytes.
- cosign 3 (a referrer of artifactType ``application/vnd.dev.sigstore.bundle.v0.3+json``):
  a Sigstore bundle whose DSSE envelope carries an in-toto statement naming the
  manifest as its subject, with predicate type ``https://sigstore.dev/cosign/sign/v1``
  (a signature, not some other attestation), signed over DSSE's pre-authentication
  encoding; or a ``messageSignature`` over the manifest's own bytes.

Only a key's signature is checked: a bundle's certificate, transparency-log entries
and timestamps are not (the proxy verifies offline, against the configured keys).
The cryptography is the ``cryptography`` library's; nothing here computes a
signature itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# The bundle's own mediaType, in the versions that carry a DSSE envelope or a
# message signature the same way (protobuf-specs, "Bundle").
BUNDLE_MEDIA_TYPES = frozenset(
    {
        BUNDLE_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    }
)
IN_TOTO = "application/vnd.in-toto+json"
STATEMENTS = frozenset({"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"})
# cosign 3's image signature is an attestation of this type; an SBOM or provenance
# attestation of the same image is no signature of it.
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
# RSA keys shorter than this are refused (NIST SP 800-57: 2048 bits at least).
MIN_RSA_BITS = 2048
# Signatures of one DSSE envelope tried at most.
MAX_ENVELOPE_SIGNATURES = 8


def load_key(pem: bytes) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo): ECDSA P-256, Ed25519 or RSA of at
    least 2048 bits; ValueError for anything else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"ECDSA keys are P-256 here, not {key.curve.name}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys of {key.key_size} bits are too short")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ValueError("only ECDSA P-256, Ed25519 and RSA keys are taken")


def key_id(key: PublicKey) -> str:
    """The sha256 of the key's SubjectPublicKeyInfo (DER), in hex: the same key
    whatever file or PEM spelling it came from."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def verify(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over ``message``, as sigstore's verifiers
    check it: ECDSA P-256 with SHA-256 (ASN.1 DER signature), Ed25519 over the
    message itself, RSA PKCS#1 v1.5 with SHA-256."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_digest(payload: bytes) -> str | None:
    """The manifest digest a simple signing payload names, if it is a cosign image
    signature (``critical.type``); None for anything else."""
    doc = _json(payload)
    critical = doc.get("critical") if doc is not None else None
    if not isinstance(critical, dict) or critical.get("type") != SIGNATURE_TYPE:
        return None
    image = critical.get("image")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    return digest if isinstance(digest, str) else None


def check_simple_signing(
    payload: bytes, signature_b64: str, digest: str, keys: dict[str, PublicKey]
) -> str | None:
    """The id of the key (of ``keys``, by id) whose signature ``signature_b64`` is over
    ``payload``, when the payload names exactly ``digest``; None otherwise."""
    if signed_digest(payload) != digest:
        return None
    signature = _b64(signature_b64)
    if signature is None:
        return None
    return next((kid for kid, key in keys.items() if verify(key, payload, signature)), None)


def check_bundle(
    bundle: bytes, digest: str, manifest: bytes | None, keys: dict[str, PublicKey]
) -> str | None:
    """The id of the key whose signature in Sigstore ``bundle`` signs ``digest``; None
    otherwise. ``manifest``: the manifest's bytes, which a ``messageSignature`` is
    over (None: such a bundle cannot be checked)."""
    doc = _json(bundle)
    if doc is None or doc.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        return None
    envelope = doc.get("dsseEnvelope")
    if isinstance(envelope, dict):
        return _check_envelope(envelope, digest, keys)
    message = doc.get("messageSignature")
    if isinstance(message, dict) and manifest is not None:
        return _check_message(message, digest, manifest, keys)
    return None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, which a DSSE signature is over
    (secure-systems-lab/dsse, protocol.md): ``DSSEv1 SP len(type) SP type SP
    len(body) SP body``, lengths in ASCII decimal of the UTF-8 bytes."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _check_envelope(
    envelope: dict[str, Any], digest: str, keys: dict[str, PublicKey]
) -> str | None:
    payload_type, payload = envelope.get("payloadType"), envelope.get("payload")
    signatures = envelope.get("signatures")
    if payload_type != IN_TOTO or not isinstance(payload, str) or not isinstance(signatures, list):
        return None
    body = _b64(payload)
    if body is None or not _statement_names(body, digest):
        return None
    message = pae(payload_type, body)
    for entry in signatures[:MAX_ENVELOPE_SIGNATURES]:
        raw = entry.get("sig") if isinstance(entry, dict) else None
        signature = _b64(raw) if isinstance(raw, str) else None
        if signature is None:
            continue
        for kid, key in keys.items():
            if verify(key, message, signature):
                return kid
    return None


def _statement_names(body: bytes, digest: str) -> bool:
    """Whether an in-toto statement is a cosign signature whose subject is ``digest``."""
    doc = _json(body)
    if doc is None or doc.get("_type") not in STATEMENTS:
        return False
    if doc.get("predicateType") != SIGN_PREDICATE:
        return False
    algorithm, _, hex_ = digest.partition(":")
    subjects = doc.get("subject")
    for subject in subjects if isinstance(subjects, list) else []:
        named = subject.get("digest") if isinstance(subject, dict) else None
        if isinstance(named, dict) and named.get(algorithm) == hex_:
            return True
    return False


def _check_message(
    message: dict[str, Any], digest: str, manifest: bytes, keys: dict[str, PublicKey]
) -> str | None:
    """A signature over the manifest's bytes, whose stated digest is the manifest's."""
    stated = message.get("messageDigest")
    raw = message.get("signature")
    if not isinstance(stated, dict) or stated.get("algorithm") != "SHA2_256":
        return None
    value = stated.get("digest")
    named = _b64(value) if isinstance(value, str) else None
    actual = hashlib.sha256(manifest).digest()
    if named != actual or digest != f"sha256:{actual.hex()}" or not isinstance(raw, str):
        return None
    signature = _b64(raw)
    if signature is None:
        return None
    return next((kid for kid, key in keys.items() if verify(key, manifest, signature)), None)


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
