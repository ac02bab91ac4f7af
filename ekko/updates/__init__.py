"""The low-latency update data plane: parameter rows flow from a trainer to every inference server
within seconds, peer to peer, prioritised and compressed (the Ekko paper's design, OSDI '22).

Pure core (no I/O; clocks are passed in): :mod:`.versions` (row versions, knowledge),
:mod:`.store` (numpy tables, idempotent monotone apply), :mod:`.priority` (the scheduler that fills
a pull response), :mod:`.codec` (the wire frames), :mod:`.link` (token bucket and delay).
Processes (aiohttp): :mod:`.node` (pulls from upstreams, serves downstreams) and
:mod:`.publisher` (the origin a trainer writes to). See docs/updates.md.
"""
