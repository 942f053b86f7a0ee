"""The shared tier: an S3 bucket (or an S3-compatible store) behind the node-local cache.

Many proxies, in many clusters, read blobs and manifests from it by digest and write
back what they fetched from an upstream, so a layer leaves the upstream once per
company rather than once per cluster. boto3 only signs (on the AWS threads); aiohttp
moves every byte on the event loop.
"""
