"""Manifests and tags: what a tag names now, and the manifests themselves.

service.py   ManifestService: a manifest by tag or digest, as the client's Accept admits
resolve.py   a tag to its digest: freshness, one revalidation at a time, stale-if-error
bodies.py    manifests by digest: memory, disk, and what is kept of a new one
peers.py     asking the owner of a tag or digest (cluster mode), verified
listing.py   tag lists, paginated as the spec says
"""
