"""The chain of blob sources: the path every byte of a blob takes to a client.

The chain (each link a BlobSource; chains.py puts them in order):

source.py    what every link answers (BlobSource, Body), what feeds a fill (Feed), and
             what a fill's lanes ask of a swarm (Swarm, told their Progress; Swarms)
chains.py    the chains of links, one for each kind of caller
service.py   BlobService: the chain for one kind of caller, plus its bookkeeping
vouched.py   the links rule: a digest under a pair only when its upstream vouched
redirect.py  a 307 to the shared tier's bucket (``shared.redirect``)
local.py     the local store: complete, verified files, sent with sendfile
inflight.py  fills in flight: join one, or start one fed by the links after it; the
             registry of fills (Fills) and what it tells the node (FillEvents)
peers.py     the digest's owner and the next in rank (cluster mode)
shared.py    the shared tier's bucket, between the peers and the upstream
upstream.py  the upstream registry itself, the last link
relay.py     a body streamed through uncached, verified as it passes

The fill machinery (one download into the cache, fed by the links after the fills):

admission.py the gate's fill slots, shared fairly between clients
disk.py      the disk budget: min_free, and the cache's limit counting running fills
fill.py      one download, verified before anything is kept; its readers' side
fillstate.py its options, state, counters, and the lease it holds while it runs
fillbody.py  a reader of a fill: tailing the temp file as it lands
lanes.py     a fill's lanes: one blob as byte ranges on several connections (and
             the pieces its swarm plans)
target.py    what the lanes write into (the fill), and one request in flight
landing.py   a fill's temp file: pieces at their offsets, the digest over the prefix
reading.py   a body read in the buffers it arrived in, cut without copying
segments.py  pure: spans, what is on disk, which range goes to which feed next, what
             an answer to a range must carry
"""
