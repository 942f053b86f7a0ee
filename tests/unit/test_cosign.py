"""cosign signatures verified by cacheproxy.policy.cosign.

The first tests take a signature made by the real cosign, from containers/image's
test data (tests/data/cosign/README.md names the source repository, path and
commit). The others make signatures in cosign's documented formats: a simple
signing payload signed as cosign 2 signs it (ECDSA P-256 SHA-256 in ASN.1 DER,
Ed25519, RSA PKCS#1 v1.5), and cosign 3's Sigstore bundle (a DSSE envelope over an
in-toto statement, or a message signature).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from cacheproxy.policy import cosign

DATA = Path(__file__).resolve().parents[1] / "data" / "cosign"
# containers/image's "sigstore attachment" files start with this (its
# signature/sigstore.go); JSON follows.
ATTACHMENT = b"\x00sigstore-json\n"


def keys_of(*pems: bytes) -> dict[str, cosign.PublicKey]:
    loaded = [cosign.load_key(pem) for pem in pems]
    return {cosign.key_id(key): key for key in loaded}


def real_signature() -> tuple[bytes, str, str]:
    """(payload, base64 signature, the signed manifest's digest) of the fixture."""
    raw = (DATA / "signature-1").read_bytes()
    assert raw.startswith(ATTACHMENT)
    doc = json.loads(raw[len(ATTACHMENT) :])
    assert doc["mimeType"] == cosign.SIMPLE_SIGNING
    payload = base64.b64decode(doc["payload"])
    manifest = (DATA / "manifest.json").read_bytes()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    return payload, doc["annotations"][cosign.SIGNATURE_ANNOTATION], digest


def test_a_signature_made_by_the_real_cosign_verifies_with_its_key() -> None:
    payload, signature, digest = real_signature()
    keys = keys_of((DATA / "cosign.pub").read_bytes())
    assert cosign.signed_digest(payload) == digest
    assert cosign.check_simple_signing(payload, signature, digest, keys) == next(iter(keys))


def test_the_real_signature_fails_with_another_key_a_tampered_payload_or_digest() -> None:
    payload, signature, digest = real_signature()
    keys = keys_of((DATA / "cosign.pub").read_bytes())
    other = keys_of((DATA / "cosign2.pub").read_bytes())
    assert cosign.check_simple_signing(payload, signature, digest, other) is None
    # Still naming the same manifest, but not the bytes that were signed.
    tampered = payload.replace(b"cosign-signed-single-sample", b"cosign-signed-single-sampl3")
    assert tampered != payload and cosign.signed_digest(tampered) == digest
    assert cosign.check_simple_signing(tampered, signature, digest, keys) is None
    # A valid signature of another manifest is no signature of this one.
    elsewhere = "sha256:" + "0" * 64
    assert cosign.check_simple_signing(payload, signature, elsewhere, keys) is None
    assert cosign.check_simple_signing(payload, "not base64!", digest, keys) is None


def _pem(
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sign(private: object, message: bytes) -> bytes:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(message)
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.sign(message, padding.PKCS1v15(), hashes.SHA256())


def payload_for(digest: str, kind: str = cosign.SIGNATURE_TYPE) -> bytes:
    """A simple signing payload as cosign 2 writes it."""
    critical = {
        "identity": {"docker-reference": "registry.example/prod/app"},
        "image": {"docker-manifest-digest": digest},
        "type": kind,
    }
    return json.dumps({"critical": critical, "optional": None}).encode()


PRIVATE_KEYS = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}


@pytest.mark.parametrize("kind", PRIVATE_KEYS)
def test_simple_signing_with_each_kind_of_key(kind: str) -> None:
    private = PRIVATE_KEYS[kind]()
    stranger = ec.generate_private_key(ec.SECP256R1())
    digest = "sha256:" + hashlib.sha256(b"a manifest").hexdigest()
    payload = payload_for(digest)
    signature = base64.b64encode(_sign(private, payload)).decode()
    keys = keys_of(_pem(private))
    assert cosign.check_simple_signing(payload, signature, digest, keys) == next(iter(keys))
    assert cosign.check_simple_signing(payload, signature, digest, keys_of(_pem(stranger))) is None
    # Signed, but not a cosign image signature.
    other = payload_for(digest, kind="atomic container signature")
    signed_other = base64.b64encode(_sign(private, other)).decode()
    assert cosign.check_simple_signing(other, signed_other, digest, keys) is None


def bundle_of(statement: dict[str, object], signature: bytes) -> bytes:
    payload = json.dumps(statement).encode()
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": cosign.IN_TOTO,
        "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
    }
    return json.dumps({"mediaType": cosign.BUNDLE_TYPE, "dsseEnvelope": envelope}).encode()


def statement_for(digest: str, predicate: str = cosign.SIGN_PREDICATE) -> dict[str, object]:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "registry.example/prod/app", "digest": {"sha256": digest[7:]}}],
        "predicateType": predicate,
        "predicate": {},
    }


def test_dsse_pre_authentication_encoding_matches_the_spec_example() -> None:
    # secure-systems-lab/dsse protocol.md's test vector.
    assert (
        cosign.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_a_cosign_3_bundle_with_a_dsse_envelope() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    keys = keys_of(_pem(private))
    digest = "sha256:" + hashlib.sha256(b"an index").hexdigest()

    def signed(statement: dict[str, object]) -> bytes:
        body = json.dumps(statement).encode()
        return bundle_of(statement, _sign(private, cosign.pae(cosign.IN_TOTO, body)))

    assert cosign.check_bundle(signed(statement_for(digest)), digest, None, keys) is not None
    # An SBOM attestation of the same image is no signature of it.
    sbom = statement_for(digest, "https://spdx.dev/Document")
    assert cosign.check_bundle(signed(sbom), digest, None, keys) is None
    elsewhere = "sha256:" + "1" * 64
    assert cosign.check_bundle(signed(statement_for(digest)), elsewhere, None, keys) is None
    # Signed over the payload alone, not its pre-authentication encoding.
    bare = json.dumps(statement_for(digest)).encode()
    assert cosign.check_bundle(bundle_of(statement_for(digest), _sign(private, bare)),
                               digest, None, keys) is None  # fmt: skip
    stranger = keys_of(_pem(ec.generate_private_key(ec.SECP256R1())))
    assert cosign.check_bundle(signed(statement_for(digest)), digest, None, stranger) is None


def test_a_bundle_with_a_message_signature_over_the_manifest() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    keys = keys_of(_pem(private))
    manifest = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    message = {
        "messageDigest": {
            "algorithm": "SHA2_256",
            "digest": base64.b64encode(hashlib.sha256(manifest).digest()).decode(),
        },
        "signature": base64.b64encode(_sign(private, manifest)).decode(),
    }
    bundle = json.dumps({"mediaType": cosign.BUNDLE_TYPE, "messageSignature": message}).encode()
    assert cosign.check_bundle(bundle, digest, manifest, keys) is not None
    assert cosign.check_bundle(bundle, digest, None, keys) is None
    assert cosign.check_bundle(bundle, digest, manifest + b" ", keys) is None


def test_keys_of_other_kinds_are_refused() -> None:
    for private in (
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ):
        with pytest.raises(ValueError):
            cosign.load_key(_pem(private))
    with pytest.raises(ValueError):
        cosign.load_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    # One key, one id, whatever PEM spelling it came in.
    pem = (DATA / "cosign.pub").read_bytes()
    assert cosign.key_id(cosign.load_key(pem)) == cosign.key_id(cosign.load_key(pem + b"\n"))
