"""The swarm (cluster mode with ``peer_holders``): a node filling a blob takes pieces
from every node that holds it, as the digest's owner names them.

Above ``blobs/``: the peer link there is handed :class:`node.SwarmNode` as its
``blobs.source.Swarms``, and a fill's lanes plan with what it returns; nothing in
``blobs/`` imports this package. The HTTP endpoints are ``http/swarm.py``.

policy.py    pure: which holder sends which piece (rarest first, the upload bound)
lists.py     pure: the owner's holder lists, and how spans and lists go on the wire
memory.py    what this node's swarms share: busy and suspect holders, owner-only digests
feed.py      one holder's pieces endpoint as a feed of a fill's lanes
asker.py     one fill's side, the side that asks: reports to the owner, plans pieces
node.py      this node's swarms: the one a fill fed by peers joins
holdings.py  this node's side that answers: the owner's lists, a holder's uploads
"""
