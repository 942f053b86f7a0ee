"""What the kernel knows of a connection's sending: the bytes its peer has
acknowledged, and whether bytes still wait for the peer (Linux ``TCP_INFO``).

One ``getsockopt`` tells whether a client takes what it is sent, whatever sends it
(``loop.sendfile``, a transport's writes, TLS records): an acknowledged byte is a
byte in the client's receive buffer. A client that reads nothing advertises a zero
window (RFC 9293 section 3.8.6.1), so its acknowledged count stops while bytes stay
queued.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

# Offsets in Linux's ``struct tcp_info`` (include/uapi/linux/tcp.h): tcpi_unacked
# (segments sent and not acknowledged), tcpi_bytes_acked (Linux 4.1, RFC 4898's
# tcpEStatsAppHCThruOctetsAcked) and tcpi_notsent_bytes (Linux 4.6).
_UNACKED = 24
_BYTES_ACKED = 120
_NOTSENT = 144
# Asked for: enough for the fields above; the kernel copies what it has.
_INFO_LEN = 160

TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
# Where the kernel cannot be asked, the send timeout is off (logged at start).
SUPPORTED = TCP_INFO is not None and hasattr(socket, "IPPROTO_TCP")


def sending(sock: Any) -> tuple[int, bool] | None:
    """(bytes the peer acknowledged, whether bytes still wait for it), or None
    where the kernel does not say (not Linux, not TCP, a kernel before 4.6)."""
    if TCP_INFO is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _INFO_LEN)
    except (OSError, ValueError):
        return None
    if len(info) < _NOTSENT + 4:
        return None
    (acked,) = struct.unpack_from("=Q", info, _BYTES_ACKED)
    (unacked,) = struct.unpack_from("=I", info, _UNACKED)
    (notsent,) = struct.unpack_from("=I", info, _NOTSENT)
    return acked, bool(unacked or notsent)


def reset_on_close(sock: Any) -> None:
    """Make closing ``sock`` send a reset (SO_LINGER 0): the kernel then drops what
    it still queues for a peer that takes nothing, instead of retrying it."""
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
