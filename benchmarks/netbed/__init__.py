"""A real test bed for cluster rollouts: network namespaces, veth pairs on a bridge, tc limits.

``python3 -m benchmarks.netbed`` (see ``__main__.py`` and benchmarks/README.md) builds
the network (``net.py``), starts the systems under test in it (``systems.py``), runs
rollouts with one verifying client per node (``bed.py``, ``client.py``) and reports
rollout time and bytes from the kernel's counters (``report.py``); ``sim.py`` models
the same rollouts past this machine.
"""
