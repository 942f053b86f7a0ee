"""Signatures as cosign writes them, made by the tests with their own keys.

cosign 2 (its "Signature spec", the ``.sig`` tag): a manifest under
``sha256-<hex>.sig`` whose layer is the simple signing payload
(``application/vnd.dev.cosign.simplesigning.v1+json``), annotated
``dev.cosignproject.cosign/signature`` with the base64 ECDSA P-256 SHA-256 signature
(ASN.1 DER) over the payload's bytes. cosign 3: a Sigstore bundle (v0.3) as a
referrer, its DSSE envelope over an in-toto statement with predicate type
``https://sigstore.dev/cosign/sign/v1`` naming the image, signed over DSSE's
pre-authentication encoding.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.images import OCI_MANIFEST, push_blob, push_manifest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"


def new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key (cosign generate-key-pair's kind), its public half written
    to ``path`` as PEM."""
    private = ec.generate_private_key(ec.SECP256R1())
    write_public(private, path)
    return private


def write_public(private: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)


def _sign(private: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(private.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


async def sign_cosign2(
    url: str, repo: str, digest: str, private: ec.EllipticCurvePrivateKey, reference: str
) -> str:
    """Sign ``digest`` as cosign 2 does; returns the digest of the ``.sig`` manifest."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    layer = await push_blob(url, repo, payload)
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = await push_blob(url, repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{
                "mediaType": SIMPLE_SIGNING, "digest": layer, "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": _sign(private, payload)},
            }],
        }
    ).encode()  # fmt: skip
    tag = digest.replace(":", "-") + ".sig"
    return await push_manifest(url, repo, tag, manifest, OCI_MANIFEST)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding (secure-systems-lab/dsse, protocol.md)."""
    kind = payload_type.encode()
    return b"DSSEv1 " + b" ".join([str(len(kind)).encode(), kind, str(len(body)).encode(), body])


def cosign3_bundle(digest: str, private: ec.EllipticCurvePrivateKey, reference: str) -> bytes:
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": reference, "digest": {"sha256": digest.removeprefix("sha256:")}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {},
        }
    ).encode()
    envelope = {
        "payload": base64.b64encode(statement).decode(),
        "payloadType": IN_TOTO,
        "signatures": [{"sig": _sign(private, pae(IN_TOTO, statement)), "keyid": ""}],
    }
    bundle = {
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "dsseEnvelope": envelope,
    }
    return json.dumps(bundle).encode()
