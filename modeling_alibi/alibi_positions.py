"""Position encodings of the paper's baselines: sinusoidal, rotary and learned. ALiBi needs none of them.

ALiBi lives in the attention scores (alibi_mask.py); these exist so that one model class trains and scores the
paper's comparisons with every other piece equal.

Hub payload: imports only torch and the standard library.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """fairseq/tensor2tensor sinusoids, [sin | cos] halves. Positions (b, q) -> (b, q, dim) fp32."""
    half = dim // 2
    frequencies = torch.exp(
        torch.arange(half, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / max(half - 1, 1))
    )
    angles = positions.float()[..., None] * frequencies  # (b, q, half)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(embedding, (0, dim - 2 * half))  # odd dim: one zero column, as fairseq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables (Su et al., 2021) for positions (b, q) -> cos, sin of shape (b, 1, q, d) in fp32."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (b, q, d/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (b, 1, q, d)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


def add_positions(
    hidden_states: torch.Tensor,
    positions: torch.Tensor,
    config,
    embed_positions: nn.Embedding | None,
    check: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Apply `config.position_encoding` to the embeddings (b, q, d); rotary returns its tables for the layers.

    `check` reads a device value to reject learned positions past the table; callers skip it while traced.
    """
    encoding, rotary = config.position_encoding, None
    positions = positions.clamp(min=0)  # padding has position -1; its value is masked anyway
    if encoding == "learned":
        if check and int(positions.max()) >= config.max_position_embeddings:
            raise ValueError(
                f"Position {int(positions.max())} is past max_position_embeddings={config.max_position_embeddings} "
                "of this learned-position model; ALiBi has no such limit."
            )
        hidden_states = hidden_states + embed_positions(positions)
    elif encoding == "sinusoidal":
        hidden_states = hidden_states + sinusoidal_embedding(positions, config.hidden_size).to(hidden_states.dtype)
    elif encoding == "rotary":
        rotary = rotary_cos_sin(positions, config.head_dim, config.rope_theta)
    return hidden_states, rotary
