"""The subcommands: each maps its arguments onto the package and prints the outcome.

serve.py          run the proxy
cache.py          ls, gc, verify: the cache directory, server running or not
airgap/           prefetch, export, import: images in and out of an air gap
report.py         what the cache saved
peers.py          a running node's view of its cluster
client_config.py  node files that point a container runtime at the proxy
healthcheck.py    the container image's HEALTHCHECK
"""
