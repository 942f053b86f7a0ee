"""The signature policy's pure and local parts: its [[policy]] tables, the key
files read again when they change, the records verdicts and blob marks are kept in,
and the verification of what was found."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cacheproxy.config import ConfigError, PolicyRule, load_config
from cacheproxy.policy import cosign
from cacheproxy.policy.engine import verify_all
from cacheproxy.policy.keys import RECHECK, Keyring
from cacheproxy.policy.material import is_material
from cacheproxy.policy.records import BlobMarks, Verdicts
from cacheproxy.policy.signatures import Candidate
from cacheproxy.store.index import Index


def write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    private = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private


def test_policy_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[policy]]\nrepositories = ["docker.io/prod/*"]\nkeys = ["/k/a.pub"]\n'
        '[[policy]]\nname = "edge"\nrepositories = "ghcr.io/*"\nkeys = ["/k/b.pub"]\n'
        'mode = "warn"\nper_platform = true\n'
    )
    config = load_config(file=path, env={})
    assert config.policies == (
        PolicyRule(("docker.io/prod/*",), "cosign", ("/k/a.pub",)),
        PolicyRule(("ghcr.io/*",), "cosign", ("/k/b.pub",), "warn", True, "edge"),
    )
    assert [r.label(i) for i, r in enumerate(config.policies)] == ["0", "edge"]


@pytest.mark.parametrize(
    ("table", "text"),
    [
        ('repositories = ["a/*"]', "keys must be a non-empty list"),
        ('keys = ["/k"]', "repositories must be a non-empty list"),
        ('repositories = ["a/*"]\nkeys = ["/k"]\nmode = "loose"', "mode must be one of"),
        ('repositories = ["a/*"]\nkeys = ["/k"]\nrequire = "gpg"', "require must be one of"),
        ('repositories = ["a/*"]\nkeys = ["/k"]\nper_platform = "yes"', "true or false"),
        ('repositories = ["a/*"]\nkeys = ["/k"]\nsubjects = ["x"]', "keys are"),
    ],
)
def test_bad_policy_tables(tmp_path: Path, table: str, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[[policy]]\n{table}\n")
    with pytest.raises(ConfigError, match=text):
        load_config(file=path, env={})


def test_two_policies_of_one_name_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    one = '[[policy]]\nname = "x"\nrepositories = ["a/*"]\nkeys = ["/k"]\n'
    path.write_text(one + one)
    with pytest.raises(ConfigError, match="share a name"):
        load_config(file=path, env={})


def test_a_key_file_is_read_again_when_it_changes_and_fails_closed(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "release.pub"
    write_key(path)
    ring = Keyring((path,), clock=lambda: now[0])
    first = set(ring.keys)
    assert len(first) == 1 and not ring.due()
    write_key(path)
    os.utime(path, ns=(1, 1))  # another stamp, whatever the clock's granularity
    assert not ring.due(), "not looked at on every request"
    now[0] += RECHECK
    assert ring.due() and ring.refresh()
    assert set(ring.keys) not in ({}, first)
    path.write_text("not a key")
    now[0] += RECHECK
    assert ring.refresh() and ring.keys == {}, "a key that cannot be read counts no key"


def test_a_key_that_cannot_be_read_at_the_start_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Keyring((tmp_path / "missing.pub",))
    bad = tmp_path / "p384.pub"
    bad.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="P-256"):
        Keyring((bad,))


async def test_verdicts_and_marks_are_kept_in_the_index(tmp_path: Path) -> None:
    index = Index(tmp_path / "index")
    try:
        await Verdicts(index).add("sha256:m", {"key-a": "sha256:sig"})
        scope = "prod\0up\0repo"
        marks = BlobMarks(index)
        await marks.mark(scope, "sha256:refused", ["sha256:shared", "sha256:own"], False)
        assert await marks.refused("sha256:shared", [scope]) == scope
        await marks.mark(scope, "sha256:allowed", ["sha256:shared"], True)
        # Another process over the same index (a restart) finds the same.
        again = Verdicts(index)
        assert await again.get("sha256:m") == {"key-a": "sha256:sig"}
        marks = BlobMarks(index)
        assert await marks.refused("sha256:shared", [scope]) is None
        assert await marks.refused("sha256:own", [scope]) == scope
        assert await marks.refused("sha256:own", ["other\0up\0repo"]) is None
        # The refused image signed later: allowed, and its own blob with it.
        await marks.mark(scope, "sha256:refused", ["sha256:shared", "sha256:own"], True)
        assert await BlobMarks(index).refused("sha256:own", [scope]) is None
        # Gone with the content.
        index.forget_content("sha256:m")
        assert await Verdicts(index).get("sha256:m") == {}
    finally:
        index.close()


def test_verify_all_names_each_key_by_the_signature_it_rests_on() -> None:
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = {cosign.key_id(k.public_key()): k.public_key() for k in (a, b)}
    digest = "sha256:" + "ab" * 32
    payload = json.dumps(
        {"critical": {"image": {"docker-manifest-digest": digest}, "type": cosign.SIGNATURE_TYPE}}
    ).encode()

    def signed(key: ec.EllipticCurvePrivateKey) -> str:
        return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()

    found = verify_all(
        [
            Candidate("sha256:junk", "simple", payload, "AAAA"),
            Candidate("sha256:sig-b", "simple", payload, signed(b)),
            Candidate("sha256:bundle", "bundle", b"{}"),
        ],
        digest,
        None,
        keys,
    )
    assert found == {cosign.key_id(b.public_key()): "sha256:sig-b"}


def _manifest(*layer_types: str) -> bytes:
    layers = [{"mediaType": t, "digest": "sha256:" + "0" * 64, "size": 1} for t in layer_types]
    return json.dumps({"schemaVersion": 2, "layers": layers}).encode()


def test_verification_material_is_what_no_runtime_runs() -> None:
    image = "application/vnd.oci.image.manifest.v1+json"
    index = "application/vnd.oci.image.index.v1+json"
    assert is_material(image, _manifest(cosign.SIMPLE_SIGNING, cosign.SIMPLE_SIGNING))
    assert is_material(image, _manifest(cosign.BUNDLE_TYPE))
    assert is_material(image, _manifest("application/spdx+json"))
    tar = "application/vnd.oci.image.layer.v1.tar+gzip"
    assert not is_material(image, _manifest(tar))
    assert not is_material(image, _manifest(cosign.SIMPLE_SIGNING, tar))
    assert not is_material(image, _manifest("application/x-unknown"))
    assert not is_material(image, _manifest())
    referrers = {"manifests": [{"artifactType": cosign.BUNDLE_TYPE, "digest": "d"}]}
    assert is_material(index, json.dumps(referrers).encode())
    platforms = {"manifests": [{"platform": {"os": "linux"}, "digest": "d"}]}
    assert not is_material(index, json.dumps(platforms).encode())
    assert not is_material(index, b"not json")
