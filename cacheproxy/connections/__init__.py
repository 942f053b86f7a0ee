"""Every connection to the proxy, bounded in time and in count.

guard.py    one connection's protocol: aiohttp's handler inside; its TLS handshake,
            the request-head deadline and the send watch (a client that takes
            nothing is cut)
gate.py     one listener's connections: the bound, the idle shed first, each
            address's share, the 503 beyond it, the handshakes in progress; the
            ``mark`` middleware that tells guards about requests
shares.py   what each address holds, and whose place a newcomer may take
tcpinfo.py  what the kernel knows of a connection's sending (Linux TCP_INFO)
budget.py   file descriptors: the limit raised, the bounds fitted into it
"""

from .gate import CONNECTIONS, Connections, Gate, GateStats, mark

__all__ = ["CONNECTIONS", "Connections", "Gate", "GateStats", "mark"]
