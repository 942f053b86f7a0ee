"""The signature policy at the mirror ([[policy]]), against the real registry
(distribution 2.8, which has no referrers API: cosign 3's bundles are listed under
the referrers tag schema, as cosign leaves them there).

Images are signed the ways cosign signs them (tests/support/signing.py): cosign 2's
``.sig`` tag and cosign 3's Sigstore bundle as a referrer, with keys the tests make.
A signature made by the real cosign is verified in tests/unit/test_cosign.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.integration.test_referrers import (
    cacheproxy_cli,
    push_artifact,
    push_tag_schema,
)
from tests.integration.test_runtimes import containerd  # noqa: F401 (a fixture)
from tests.integration.test_who_reads_what import (
    ACCEPT,
    PUBLIC,
    Upstreams,
    upstreams,  # noqa: F401 (a fixture)
    write_config,
)
from tests.support.clients import run_process, skopeo
from tests.support.images import PushedImage, push_image, push_index
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.runtimes import Containerd
from tests.support.signing import BUNDLE, cosign3_bundle, new_key, sign_cosign2, write_public
from tests.support.waiting import eventually

MISSING = "no cosign signature by a configured key"


async def sign_cosign3(
    url: str, repo: str, image: PushedImage, private: ec.EllipticCurvePrivateKey
) -> str:
    """cosign 3's signature on a registry without the referrers API: the bundle as a
    referrer, listed under the tag schema."""
    bundle = cosign3_bundle(image.digest, private, f"{PUBLIC}/{repo}")
    artifact = await push_artifact(url, repo, image, BUNDLE, bundle)
    await push_tag_schema(url, repo, image, [artifact])
    return artifact.digest


@dataclass
class World:
    """Images under ``lib/prod-*``: signed by key A (cosign 2 and cosign 3), unsigned,
    signed by key B; one under ``lib/dev-*`` no policy holds for."""

    keys: dict[str, Path]
    private: dict[str, ec.EllipticCurvePrivateKey]
    cosign2: PushedImage
    cosign3: PushedImage
    unsigned: PushedImage
    other_key: PushedImage
    dev: PushedImage

    def signed(self) -> list[PushedImage]:
        return [self.cosign2, self.cosign3]

    def refused(self) -> list[PushedImage]:
        return [self.unsigned, self.other_key]


@pytest.fixture
async def world(upstreams: Upstreams, tmp_path: Path) -> World:  # noqa: F811
    url, run = upstreams.public.url, uuid.uuid4().hex[:6]
    keys = {"a": tmp_path / "a.pub", "b": tmp_path / "b.pub"}
    private = {name: new_key(path) for name, path in keys.items()}
    images = {}
    for kind in ("cosign2", "cosign3", "unsigned", "other", "dev"):
        repo = f"lib/{'dev' if kind == 'dev' else 'prod'}-{kind}-{run}"
        images[kind] = await push_image(url, repo, "v1", layer_sizes=(3000, 5000))
    for kind, key in (("cosign2", "a"), ("other", "b")):
        image = images[kind]
        await sign_cosign2(url, image.name, image.digest, private[key], f"{PUBLIC}/{image.name}")
    await sign_cosign3(url, images["cosign3"].name, images["cosign3"], private["a"])
    return World(keys, private, images["cosign2"], images["cosign3"], images["unsigned"],
                 images["other"], images["dev"])  # fmt: skip


def policy_config(tmp_path: Path, ups: Upstreams, keys: list[Path], **extra: str) -> Path:
    """A [[policy]] named "prod" over ``public.test/lib/prod-*``, with ``extra`` keys."""
    lines = [
        "[[policy]]",
        'name = "prod"',
        f'repositories = ["{PUBLIC}/lib/prod-*"]',
        f"keys = {json.dumps([str(k) for k in keys])}",
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    return write_config(tmp_path, ups, "\n".join(lines) + "\n")


async def error_of(http: aiohttp.ClientSession, method: str, url: str) -> tuple[int, str, str]:
    """(status, OCI error code, its message) of one request ("" when it succeeded)."""
    async with http.request(method, url, headers=ACCEPT) as resp:
        body = await resp.read()
        if resp.status < 400 or method == "HEAD":
            return resp.status, "", ""
        error = json.loads(body)["errors"][0]
        return resp.status, error["code"], error["message"]


async def pulled(proxy: RunningProxy, image: PushedImage, out: Path) -> tuple[int, str]:
    """skopeo copies the image by tag through the proxy: (exit code, stderr)."""
    ref = f"docker://{proxy.host}/{PUBLIC}/{image.name}:v1"
    result = await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")
    return result.returncode, result.stderr


async def samples(http: aiohttp.ClientSession, proxy: RunningProxy, name: str) -> list[Sample]:
    """The samples of metric ``name`` on /metrics."""
    async with http.get(f"{proxy.url}/metrics") as resp:
        text = await resp.text()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


async def checks(http: aiohttp.ClientSession, proxy: RunningProxy) -> dict[str, float]:
    """cacheproxy_policy_checks of policy "prod", by outcome."""
    found = await samples(http, proxy, "cacheproxy_policy_checks_total")
    return {s.labels["outcome"]: s.value for s in found if s.labels["policy"] == "prod"}


async def served_bytes(http: aiohttp.ClientSession, proxy: RunningProxy) -> float:
    """What the ledger says clients got from the public upstream, whatever its source."""
    found = await samples(http, proxy, "cacheproxy_savings_served_bytes_total")
    return sum(s.value for s in found if s.labels["upstream"] == PUBLIC)


async def test_enforce_serves_signed_images_and_refuses_the_rest_on_first_pull(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    config = policy_config(tmp_path, upstreams, [world.keys["a"]])
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for image in [*world.signed(), world.dev]:
            code, stderr = await pulled(proxy, image, tmp_path / f"out-{image.name[-12:]}")
            assert code == 0, stderr
        for image in world.refused():
            code, stderr = await pulled(proxy, image, tmp_path / f"out-{image.name[-12:]}")
            assert code != 0 and MISSING in stderr, stderr
            base = f"{proxy.url}/v2/{PUBLIC}/{image.name}"
            for ref in ("v1", image.digest):
                status, code_, message = await error_of(http, "GET", f"{base}/manifests/{ref}")
                assert (status, code_) == (403, "DENIED")
                assert f"{PUBLIC}/{image.name}" in message and image.digest in message
                assert MISSING in message
                assert (await error_of(http, "HEAD", f"{base}/manifests/{ref}"))[0] == 403
            # The refused image's blobs are not served under its repository either.
            for blob in image.blobs:
                status, code_, _ = await error_of(http, "GET", f"{base}/blobs/{blob.digest}")
                assert (status, code_) == (403, "DENIED")
        counted = await checks(http, proxy)
        assert counted["verified"] >= 2 and counted["refused"] >= 4
        assert counted["warned"] == counted["audited"] == 0


async def test_a_verifier_behind_the_mirror_finds_the_signatures(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    """Under enforce, the signatures themselves (no one signs a signature) are served:
    cosign 2's .sig tag and payload, cosign 3's referrers list, its tag-schema index,
    the referrer and its bundle."""
    config = policy_config(tmp_path, upstreams, [world.keys["a"]])
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for image in (world.cosign2, world.other_key):
            base = f"{proxy.url}/v2/{PUBLIC}/{image.name}"
            sig = image.digest.replace(":", "-") + ".sig"
            async with http.get(f"{base}/manifests/{sig}", headers=ACCEPT) as resp:
                assert resp.status == 200
                manifest = json.loads(await resp.read())
            for layer in manifest["layers"]:
                assert (await error_of(http, "GET", f"{base}/blobs/{layer['digest']}"))[0] == 200
        base = f"{proxy.url}/v2/{PUBLIC}/{world.cosign3.name}"
        async with http.get(f"{base}/referrers/{world.cosign3.digest}") as resp:
            listed = [d["digest"] for d in json.loads(await resp.read())["manifests"]]
        assert len(listed) == 1
        schema = world.cosign3.digest.replace(":", "-")
        assert (await error_of(http, "GET", f"{base}/manifests/{schema}"))[0] == 200
        async with http.get(f"{base}/manifests/{listed[0]}", headers=ACCEPT) as resp:
            assert resp.status == 200
            bundle = json.loads(await resp.read())["layers"][0]
        assert (await error_of(http, "GET", f"{base}/blobs/{bundle['digest']}"))[0] == 200
        assert (await checks(http, proxy))["material"] >= 4


async def test_containerd_pulls_a_signed_image_and_is_refused_the_rest(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    containerd: Containerd,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The real containerd, the proxy its only way to the registry (hosts.toml's
    server is a closed port, so no fallback can hide a refusal or a bypass)."""
    config = policy_config(tmp_path, upstreams, [world.keys["a"]])
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        hosts = tmp_path / "certs.d"
        (hosts / PUBLIC).mkdir(parents=True)
        (hosts / PUBLIC / "hosts.toml").write_text(
            'server = "http://127.0.0.1:9"\n'
            f'[host."{proxy.url}"]\n  capabilities = ["pull", "resolve"]\n'
        )

        async def pull(image: PushedImage) -> tuple[int, str]:
            ref = f"{PUBLIC}/{image.name}:v1"
            argv = ["images", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts), ref]
            result = await run_process(*containerd.ctr(*argv), timeout=60)
            return result.returncode, result.stderr

        for image in world.signed():
            code, stderr = await pull(image)
            assert code == 0, stderr
        for image in world.refused():
            code, stderr = await pull(image)
            assert code != 0, stderr
        listing = await run_process(*containerd.ctr("images", "ls", "--quiet"), timeout=30)
        pulled_refs = set(listing.check().stdout.decode().split())
        assert pulled_refs == {f"{PUBLIC}/{i.name}:v1" for i in world.signed()}
        counted = await checks(http, proxy)
        assert counted["verified"] >= 2 and counted["refused"] >= 2


async def test_signature_lookups_are_not_pulls_in_the_ledger(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    """The ledger counts what the client got: the manifest and its blobs, not the
    signatures the policy read to let them through."""
    config = policy_config(tmp_path, upstreams, [world.keys["a"]])
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        got = 0
        for image in world.signed():
            base = f"{proxy.url}/v2/{PUBLIC}/{image.name}"
            async with http.get(f"{base}/manifests/v1", headers=ACCEPT) as resp:
                assert resp.status == 200
                got += len(await resp.read())
            for blob in image.blobs:
                async with http.get(f"{base}/blobs/{blob.digest}") as resp:
                    assert resp.status == 200
                    got += len(await resp.read())
        assert (await checks(http, proxy))["verified"] == 2
        assert await served_bytes(http, proxy) == got


async def test_a_blob_shared_with_an_allowed_image_stays_servable(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    """A layer named by a refused image and by a signed one is served; what only the
    refused image names is not."""
    url, repo = upstreams.public.url, f"lib/prod-shared-{uuid.uuid4().hex[:6]}"
    seed = f"{repo}-base"
    unsigned = await push_image(url, repo, "unsigned", layer_sizes=(3000,), seed=seed)
    signed = await push_image(url, repo, "signed", layer_sizes=(3000, 4000), seed=seed)
    await sign_cosign2(url, repo, signed.digest, world.private["a"], f"{PUBLIC}/{repo}")
    shared = unsigned.blobs[1].digest  # blobs: config, then layers
    assert shared == signed.blobs[1].digest
    config = policy_config(tmp_path, upstreams, [world.keys["a"]])
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        base = f"{proxy.url}/v2/{PUBLIC}/{repo}"
        assert (await error_of(http, "GET", f"{base}/manifests/unsigned"))[0] == 403
        assert (await error_of(http, "GET", f"{base}/blobs/{shared}"))[0] == 403
        assert (await error_of(http, "GET", f"{base}/manifests/signed"))[0] == 200
        assert (await error_of(http, "GET", f"{base}/blobs/{shared}"))[0] == 200
        only_unsigned = unsigned.blobs[0].digest
        assert (await error_of(http, "GET", f"{base}/blobs/{only_unsigned}"))[:2] == (
            403,
            "DENIED",
        )


@pytest.mark.parametrize("mode", ["warn", "audit"])
async def test_warn_and_audit_serve_and_count(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
    mode: str,
) -> None:
    config = policy_config(tmp_path, upstreams, [world.keys["a"]], mode=f'"{mode}"')
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for image in [*world.signed(), *world.refused()]:
            code, stderr = await pulled(proxy, image, tmp_path / f"out-{image.name[-12:]}")
            assert code == 0, stderr
        counted = await checks(http, proxy)
        outcome = "warned" if mode == "warn" else "audited"
        # skopeo asks each manifest once by tag.
        assert (counted["verified"], counted[outcome], counted["refused"]) == (2, 2, 0)


async def test_an_index_passes_signed_or_by_its_platforms(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    """A signed index vouches for its platform manifests; an unsigned one is refused,
    unless per_platform, when each platform manifest asked is checked on its own."""
    url, run = upstreams.public.url, uuid.uuid4().hex[:6]
    signed = await push_index(url, f"lib/prod-index-{run}", "v1")
    await sign_cosign2(url, signed.name, signed.digest, world.private["a"], "x")
    unsigned = await push_index(url, f"lib/prod-bare-{run}", "v1")
    platforms = await push_index(url, f"lib/plat-{run}", "v1")
    first, second = platforms.children
    await sign_cosign2(url, platforms.name, first.digest, world.private["a"], "x")
    key = json.dumps(str(world.keys["a"]))
    extra = (
        f'[[policy]]\nname = "platforms"\nrepositories = ["{PUBLIC}/lib/plat-*"]\n'
        f"keys = [{key}]\nper_platform = true\n"
    )
    config = write_config(
        tmp_path, upstreams,
        f'[[policy]]\nname = "prod"\nrepositories = ["{PUBLIC}/lib/prod-*"]\nkeys = [{key}]\n'
        + extra,
    )  # fmt: skip
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):

        def at(image: PushedImage, ref: str) -> str:
            return f"{proxy.url}/v2/{PUBLIC}/{image.name}/manifests/{ref}"

        assert (await error_of(http, "GET", at(signed, "v1")))[0] == 200
        for child in signed.children:
            assert (await error_of(http, "GET", at(signed, child.digest)))[0] == 200
        assert (await error_of(http, "GET", at(unsigned, "v1")))[:2] == (403, "DENIED")
        assert (await error_of(http, "GET", at(platforms, "v1")))[0] == 200
        assert (await error_of(http, "GET", at(platforms, first.digest)))[0] == 200
        assert (await error_of(http, "GET", at(platforms, second.digest)))[:2] == (403, "DENIED")


async def test_a_changed_key_file_is_read_again(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    """Verdicts rest on the keys: when the key file changes, what key A signed is
    refused and what key B signed is served (the file is looked at every few
    seconds, never per request)."""
    key = tmp_path / "release.pub"
    key.write_bytes(world.keys["a"].read_bytes())
    config = policy_config(tmp_path, upstreams, [key])
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):

        def at(image: PushedImage) -> str:
            return f"{proxy.url}/v2/{PUBLIC}/{image.name}/manifests/v1"

        assert (await error_of(http, "GET", at(world.cosign2)))[0] == 200
        assert (await error_of(http, "GET", at(world.other_key)))[0] == 403
        write_public(world.private["b"], key)

        async def swapped() -> bool:
            statuses = (
                (await error_of(http, "GET", at(world.cosign2)))[0],
                (await error_of(http, "GET", at(world.other_key)))[0],
            )
            return statuses == (403, 200)

        # Past the 5 s recheck of the key file.
        await eventually(swapped, timeout=30, interval=0.2, what="the verdicts swapped (403, 200)")


async def test_the_verdicts_hold_after_export_import_offline(
    upstreams: Upstreams,  # noqa: F811
    world: World,
    tmp_path: Path,
) -> None:
    """prefetch (an operator's command, not policed), export, import into an empty
    cache, serve offline: the signatures travelled with the images, so the signed
    ones are served and the rest refused, from the cache alone."""
    plain = write_config(tmp_path, upstreams)
    refs = [f"{PUBLIC}/{i.name}:v1" for i in [*world.signed(), *world.refused()]]
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["--config", str(plain)]
    await cacheproxy_cli("prefetch", *base, "--cache-dir", str(first), *refs)
    bundle = tmp_path / "bundle.tar"
    await cacheproxy_cli("export", *base, "--cache-dir", str(first), *refs, "-o", str(bundle))
    await cacheproxy_cli("import", *base, "--cache-dir", str(second), str(bundle))
    config = policy_config(tmp_path, upstreams, [world.keys["a"]])
    asked = upstreams.public.count()
    async with (
        running_proxy(None, second, config_file=config, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        for image in world.signed():
            code, stderr = await pulled(proxy, image, tmp_path / f"off-{image.name[-12:]}")
            assert code == 0, stderr
        for image in world.refused():
            code, stderr = await pulled(proxy, image, tmp_path / f"off-{image.name[-12:]}")
            assert code != 0 and MISSING in stderr, stderr
        counted = await checks(http, proxy)
        assert counted["verified"] >= 2 and counted["refused"] >= 2
    assert upstreams.public.count() == asked, "offline: the upstream was never asked"
