"""Independent reference forward of a fairseq ALiBi `transformer_lm` state dict (shared/spec/fairseq.md §1-2).

Written from the spec in functional torch, in float64 by default, and deliberately in fairseq's own
form: ALiBi as the absolute `+slope * j` bias on a causal -inf mask, slopes from the recursive
`get_slopes`, heads as contiguous head_dim chunks, padding as a key-padding mask. It reads fairseq key
names directly and imports nothing from modeling_alibi, so it can judge the converted model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

PAD_ID = 1


def get_slopes(n: int) -> list[float]:
    """ALiBi slopes exactly as the fork computes them (fairseq/models/transformer.py)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + get_slopes(2 * closest)[0::2][: n - closest]


def _option(cfg: dict[str, Any], name: str, default: Any = None) -> Any:
    return cfg.get(name, default)


def _cutoffs(value: str | list[int] | None, vocab_size: int) -> list[int] | None:
    if value is None:
        return None
    cuts = [int(v) for v in value.split(",")] if isinstance(value, str) else [int(v) for v in value]
    return cuts + [vocab_size] if cuts[-1] < vocab_size else cuts


def vocab_size_of(sd: dict[str, torch.Tensor]) -> int:
    if "decoder.embed_tokens.weight" in sd:
        return sd["decoder.embed_tokens.weight"].shape[0]
    bands = [k for k in sd if k.startswith("decoder.embed_tokens.embeddings.") and k.endswith(".0.weight")]
    return sum(sd[k].shape[0] for k in bands)


def reference_log_probs(
    state_dict: dict[str, torch.Tensor],
    model_cfg: dict[str, Any],
    input_ids: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    pad_id: int = PAD_ID,
) -> torch.Tensor:
    """Full-vocabulary log-probs (b, T, V) of a fairseq transformer_lm for `input_ids` (b, T).

    Positions holding `pad_id` are masked as keys (fairseq adds a key-padding mask whenever the input
    contains <pad>); with right padding the real positions are unaffected.
    """
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    cfg = model_cfg
    vocab = vocab_size_of(sd)
    x = _embed(sd, cfg, input_ids, vocab)  # (b, T, d)
    d = cfg["decoder_embed_dim"]
    heads = cfg["decoder_attention_heads"]
    mask = _alibi_causal_mask(heads, input_ids.shape[1], dtype)  # (h, T, T)
    key_padding = input_ids.eq(pad_id) if input_ids.eq(pad_id).any() else None
    for i in range(cfg["decoder_layers"]):
        x = _layer(sd, cfg, f"decoder.layers.{i}.", x, mask, key_padding)
    if cfg["decoder_normalize_before"] and not _option(cfg, "no_decoder_final_norm", False):
        x = F.layer_norm(x, (d,), sd["decoder.layer_norm.weight"], sd["decoder.layer_norm.bias"], 1e-5)
    if d != cfg["decoder_output_dim"] and not _option(cfg, "tie_adaptive_weights", False):
        x = F.linear(x, sd["decoder.project_out_dim.weight"])
    if _option(cfg, "adaptive_softmax_cutoff") is not None:
        return _adaptive_softmax_log_probs(sd, cfg, x, vocab)
    tied = cfg["share_decoder_input_output_embed"]
    weight = sd["decoder.embed_tokens.weight"] if tied else sd["decoder.output_projection.weight"]
    return F.log_softmax(F.linear(x, weight), dim=-1)


def _embed(sd: dict[str, torch.Tensor], cfg: dict[str, Any], ids: torch.Tensor, vocab: int) -> torch.Tensor:
    d = cfg["decoder_embed_dim"]
    if _option(cfg, "layernorm_embedding", False) or _option(cfg, "character_embeddings", False):
        raise NotImplementedError("layernorm_embedding / character_embeddings are not part of the reference.")
    if cfg["adaptive_input"]:
        cuts = _cutoffs(cfg["adaptive_input_cutoff"], vocab)
        x = torch.zeros(*ids.shape, d, dtype=sd["decoder.embed_tokens.embeddings.0.0.weight"].dtype)
        for b, (lo, hi) in enumerate(zip([0] + cuts[:-1], cuts, strict=True)):
            in_band = (ids >= lo) & (ids < hi)
            table = sd[f"decoder.embed_tokens.embeddings.{b}.0.weight"]
            proj = sd[f"decoder.embed_tokens.embeddings.{b}.1.weight"]  # (d, d_b); band 0 has one too
            x[in_band] = F.linear(table[ids[in_band] - lo], proj)
    else:
        x = sd["decoder.embed_tokens.weight"][ids]
    scale = 1.0 if cfg["no_scale_embedding"] else math.sqrt(d)  # sqrt(decoder_embed_dim), before project_in
    x = scale * x
    if "decoder.project_in_dim.weight" in sd:
        x = F.linear(x, sd["decoder.project_in_dim.weight"])
    return x  # no positional embeddings: the fork commented the call out


def _alibi_causal_mask(heads: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """fairseq's `buffered_future_mask`: triu(-inf, 1) + slope_h * j (absolute key index j)."""
    slopes = torch.tensor(get_slopes(heads), dtype=dtype)
    alibi = slopes[:, None, None] * torch.arange(length, dtype=dtype)[None, None, :]  # (h, 1, T)
    future = torch.triu(torch.full((length, length), float("-inf"), dtype=dtype), 1)  # (T, T)
    return future[None] + alibi  # (h, T, T)


def _layer(sd: dict[str, torch.Tensor], cfg: dict[str, Any], p: str, x: torch.Tensor, mask: torch.Tensor,
           key_padding: torch.Tensor | None) -> torch.Tensor:
    d = x.shape[-1]

    def ln(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, (d,), sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"], 1e-5)

    pre = cfg["decoder_normalize_before"]
    h = _attention(sd, p + "self_attn.", ln("self_attn_layer_norm", x) if pre else x, mask, key_padding)
    x = x + h if pre else ln("self_attn_layer_norm", x + h)
    h = ln("final_layer_norm", x) if pre else x
    h = F.linear(h, sd[p + "fc1.weight"], sd[p + "fc1.bias"])
    h = _activation(cfg["activation_fn"], h)
    h = F.linear(h, sd[p + "fc2.weight"], sd[p + "fc2.bias"])
    return x + h if pre else ln("final_layer_norm", x + h)


def _activation(name: str, h: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(h)
    if name == "gelu":  # fairseq's gelu is the exact erf form
        return F.gelu(h)
    if name in ("gelu_fast", "gelu_accurate"):
        return F.gelu(h, approximate="tanh")
    raise NotImplementedError(f"activation_fn={name!r} is not part of the reference.")


def _attention(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, mask: torch.Tensor,
               key_padding: torch.Tensor | None) -> torch.Tensor:
    b, t, d = x.shape
    h = mask.shape[0]
    hd = d // h

    def heads(name: str) -> torch.Tensor:
        y = F.linear(x, sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"])
        return y.view(b, t, h, hd).transpose(1, 2)  # (b, h, T, hd): head i = i-th contiguous chunk

    q = heads("q_proj") * hd**-0.5  # scaled after the bias, before the ALiBi mask is added
    k, v = heads("k_proj"), heads("v_proj")
    scores = q @ k.transpose(-1, -2) + mask[None]  # (b, h, T, T)
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    out = scores.softmax(dim=-1) @ v  # (b, h, T, hd)
    out = out.transpose(1, 2).reshape(b, t, d)
    return F.linear(out, sd[p + "out_proj.weight"], sd[p + "out_proj.bias"])


def _adaptive_softmax_log_probs(sd: dict[str, torch.Tensor], cfg: dict[str, Any], x: torch.Tensor,
                                vocab: int) -> torch.Tensor:
    """`AdaptiveSoftmax.get_log_prob(x, target=None)`: head words + cluster logits, then each tail."""
    cuts = _cutoffs(cfg["adaptive_softmax_cutoff"], vocab)
    n_tail = len(cuts) - 1
    tied, tie_proj = cfg["tie_adaptive_weights"], cfg["tie_adaptive_proj"]
    emb = "decoder.embed_tokens.embeddings."
    asm = "decoder.adaptive_softmax."
    if tied:  # TiedHeadModule: E_0 WITHOUT its input-side projection, then the cluster logits
        head = torch.cat([F.linear(x, sd[emb + "0.0.weight"]), F.linear(x, sd[asm + "head.class_proj.weight"])], -1)
    else:
        head = F.linear(x, sd[asm + "head.weight"])
    head_lp = F.log_softmax(head, dim=-1)  # (b, T, c1 + n_tail)
    out = x.new_zeros(*x.shape[:-1], vocab)
    out[..., : cuts[0]] = head_lp[..., : cuts[0]]
    for i in range(n_tail):
        if tied and tie_proj:
            proj = F.linear(x, sd[f"{emb}{i + 1}.1.weight"].t())  # input projection used transposed
        else:
            proj = F.linear(x, sd[f"{asm}tail.{i}.0.weight"])
        table = sd[f"{emb}{i + 1}.0.weight"] if tied else sd[f"{asm}tail.{i}.2.weight"]
        tail_lp = F.log_softmax(F.linear(proj, table), dim=-1)
        out[..., cuts[i] : cuts[i + 1]] = tail_lp + head_lp[..., cuts[0] + i, None]  # + cluster prior
    return out
