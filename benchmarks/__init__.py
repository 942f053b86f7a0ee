"""Benchmarks: cacheproxy against distribution's proxy mode and nginx proxy_cache."""
