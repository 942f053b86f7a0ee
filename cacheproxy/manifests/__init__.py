"""Manifests and tags: what a tag names now, and the manifests themselves.

service.py   ManifestService: a manifest by tag or digest, as the client's Accept admits
tags.py      a tag to its digest: freshness, one revalidation at a time, stale-if-error
source.py    what a link of the chain of manifest sources answers; verify()
chains.py    the chains, link by link:
cached.py      this node's manifests (memory, disk), keeping what the links after bring
owner.py       the owner of a tag or digest (cluster mode), signed and verified
bucket.py      the shared tier's bucket, by digest, under the links rule
fetch.py       the upstream registry
bodies.py    manifests by digest: memory, disk, and what is kept of a new one
listing.py   tag lists, paginated as the spec says
"""
