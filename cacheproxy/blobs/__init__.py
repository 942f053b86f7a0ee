"""The chain of blob sources: the path every byte of a blob takes to a client.

service.py   BlobService: the chain for one kind of caller, plus its bookkeeping
source.py    what every link answers (BlobSource, Body) and what feeds a fill (Feed)
local.py     the local store: complete, verified files, sent with sendfile
inflight.py  fills in flight: join one, or start one fed by the links after it
fill.py      one download into the cache, verified before anything is kept
lanes.py     the lanes of a fill: one blob as byte ranges on several connections
landing.py   a fill's temp file: pieces at their offsets, the digest over the prefix
segments.py  pure: which range goes to which feed next, what is on disk, answers
peers.py     the digest's owner and the next in rank (cluster mode)
upstream.py  the upstream registry itself, the last link
relay.py     a body streamed through uncached, verified as it passes
"""
