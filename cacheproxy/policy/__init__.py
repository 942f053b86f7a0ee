"""The signature policy at the mirror: which manifests may be served under which
repositories, by the cosign signatures found for them (``cosign.py`` verifies,
``signatures.py`` finds, ``engine.py`` decides and remembers)."""
