"""The air-gap commands' view of an image: a list file of them, and an image's
manifests and what travels with them, through a command's runtime."""

from __future__ import annotations

from pathlib import Path

from ...manifests import images
from ...manifests.images import Related
from ...oci import ImageRef
from ...runtime import Runtime
from ...upstream.client import Upstream

# Annotation of a bundle entry that travels with an image: the subject's digest.
ANN_REFERRERS_OF = "io.cacheproxy.referrers-of"


def read_list(path: Path) -> list[str]:
    """The images of a list file: one a line, blank lines and ``#`` comments skipped."""
    lines = path.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


async def image_manifests(
    rt: Runtime, ref: ImageRef, platform: str | None
) -> tuple[list[images.Manifested], str]:
    """(digest, body, media type) of the image and, for an index, its children (those
    of ``platform`` when given), and the repository's name on its upstream."""
    up = rt.upstreams.get(ref.host)
    return await images.image_manifests(rt.clients.manifests, up, ref, platform)


async def related_manifests(rt: Runtime, up: Upstream, name: str, subject: str) -> list[Related]:
    """What travels with ``subject`` (manifests.images.related_manifests)."""
    return await images.related_manifests(
        rt.clients.manifests, rt.clients.referrers, up, name, subject
    )
