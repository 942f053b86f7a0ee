"""The tests of tests/support itself: the real registry, pushes, skopeo, the forwarder."""
