"""Air-gapped transfer: prefetch into the cache, export an OCI layout, import one.

``prefetch`` pulls images through the same code the server uses (one fill per
blob, every byte verified). ``export`` writes a standard OCI image layout tar from
the cache (``skopeo copy oci-archive:bundle.tar:<ref> ...`` reads it). ``import``
verifies every blob of such a tar against its digest and loads it, tags last, so
an interrupted import leaves nothing unverified and no tag naming missing content.

images.py     an image as the commands name it, and its manifests
prefetch.py   warm the cache, with a progress line
export.py     the cache's images as an OCI image layout tar
importing.py  such a tar verified and loaded into the cache
"""

from ...oci import ImageRef, parse_ref
from .export import export
from .images import read_list
from .importing import ImportResult, import_bundle
from .prefetch import prefetch

__all__ = [
    "ImageRef",
    "ImportResult",
    "export",
    "import_bundle",
    "parse_ref",
    "prefetch",
    "read_list",
]
