"""Generation tooling: `graph_generate`, fast decoding with a static KV cache and one CUDA graph per token.

The decoder itself ships with the model (`modeling_alibi/alibi_decoding.py`), because a plain greedy
`model.generate()` on CUDA uses it; this is its public import path.
"""

from .. import alibi_decoding as decoding
from ..alibi_decoding import graph_generate, release_decoders

__all__ = ["decoding", "graph_generate", "release_decoders"]
