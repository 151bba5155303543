"""Generation tooling: `graph_generate`, fast decoding with a static KV cache and one CUDA graph per token."""

from .decoding import graph_generate, release_decoders

__all__ = ["graph_generate", "release_decoders"]
