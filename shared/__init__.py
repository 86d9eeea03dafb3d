"""Code shared by the central registry and the edge agent.

Pure Python with no I/O framework: canonical JSON, signed envelopes, keys,
digests, the zstd codec, trust roots, wire types and the error hierarchy.
"""

__version__ = "0.1.0"
