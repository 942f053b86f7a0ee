"""Keeping the cache within its limits and rules: plans (pure), applying them, the keeper."""
