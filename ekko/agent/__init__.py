"""The Ekko agent: the data-plane sidecar that loads assigned shards and applies routing weights.

One agent runs next to each inference server. It watches its ServerAssignment and the Models of
its namespace, loads and unloads shards through an engine adapter, applies the Models' routing
weights, and reports what it holds and applies in the assignment's status. See docs/agent.md.
"""
