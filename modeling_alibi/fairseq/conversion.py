"""Convert fairseq ALiBi `transformer_lm` checkpoints (the paper's released models) to `AlibiForCausalLM` folders.

    alibi-lm convert-fairseq alibi_wt103_L512.pt --dict dict.txt --output alibi-wt103-L512 --verify

Facts implemented here are in shared/spec/fairseq.md: config in `cfg['model']` (or legacy `args`), the key
layout, tied copies that may be duplicated, garbage buffers to drop, and the forward pass `--verify` re-runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..configuration_alibi import AlibiConfig
from ..errors import UserError
from ..hub import DTYPES, check_replaceable, export_for_hub
from ..modeling_alibi import AlibiForCausalLM, alibi_slopes
from .checkpoint import fairseq_model_field, load_fairseq_checkpoint
from .dictionary import FairseqDictionary, fairseq_tokenizer

logger = logging.getLogger(__name__)

# Every arch here builds fairseq's TransformerDecoder, which the fork gave ALiBi; all resolve their options
# into cfg['model'], so the converter reads options, never arch defaults.
SUPPORTED_ARCHS = (
    "transformer_lm", "transformer_lm_big", "transformer_lm_gpt", "transformer_lm_wiki103",
    "transformer_lm_baevski_wiki103", "transformer_lm_gbw", "transformer_lm_baevski_gbw",
    "transformer_lm_gpt2_small", "transformer_lm_gpt2_medium", "transformer_lm_gpt2_big",
)
ACTIVATIONS = {
    "relu": "relu", "gelu": "gelu", "gelu_fast": "gelu_pytorch_tanh", "gelu_accurate": "gelu_pytorch_tanh",
    "swish": "silu",
}
VERIFY_TOLERANCE = 1e-3  # max |log p| difference of the float32 model; a wrong mapping is off by 0.1 or more

# fairseq key pattern -> HF key template. None: drop (buffers, or tied copies checked in `_tied_copies`).
KEY_MAP: list[tuple[str, str | None]] = [
    (r"decoder\.version", None),
    (r"decoder\.adaptive_softmax\.version", None),
    (r"decoder\.(?:[\w.]+\.)?_float_tensor", None),  # uninitialised FloatTensor(1) buffers
    (r"decoder\.embed_tokens\.weight", r"model.embed_tokens.weight"),
    (r"decoder\.embed_tokens\.embeddings\.(\d+)\.0\.weight", r"model.embed_tokens.embeddings.\1.weight"),
    (r"decoder\.embed_tokens\.embeddings\.(\d+)\.1\.weight", r"model.embed_tokens.projections.\1.weight"),
    (r"decoder\.project_in_dim\.weight", r"model.project_in.weight"),
    (r"decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"decoder\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.(weight|bias)", r"model.layers.\1.\2.\3"),
    (r"decoder\.layers\.(\d+)\.(fc1|fc2)\.(weight|bias)", r"model.layers.\1.mlp.\2.\3"),
    (r"decoder\.layer_norm\.(weight|bias)", r"model.norm.\1"),
    (r"decoder\.project_out_dim\.weight", r"model.project_out.weight"),
    (r"decoder\.output_projection\.weight", r"lm_head.weight"),
    (r"decoder\.adaptive_softmax\.head\.class_proj\.weight", r"lm_head.cluster.weight"),
    (r"decoder\.adaptive_softmax\.head\.word_proj\.weight", None),
    (r"decoder\.adaptive_softmax\.head\.weight", r"lm_head.head.weight"),  # untied: split in `_split_head`
    (r"decoder\.adaptive_softmax\.tail\.(\d+)\.0\.weight", r"lm_head.tail_projections.\1.weight"),
    (r"decoder\.adaptive_softmax\.tail\.(\d+)\.2\.weight", r"lm_head.tails.\1.weight"),
]
_COMPILED = [(re.compile(pattern), target) for pattern, target in KEY_MAP]
# The one field the ALiBi fork added to the model's dataclass (`max_tokens: int = II("task.max_tokens")`, spec: the
# fork's one change to transformer_lm.py). Upstream fairseq's cfg['model'] lacks it, and upstream adds sinusoidal
# (or learned) positions, or none, but never ALiBi.
FORK_MARKER = "max_tokens"


class ConversionError(UserError, ValueError):
    """A checkpoint this converter cannot turn into an equivalent AlibiForCausalLM; the message says why."""


def check_alibi_positions(model_cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], legacy: bool) -> None:
    """Refuse checkpoints whose positions are not the fork's ALiBi: the converted model would be another one.

    The fork keeps fairseq's position flags but never calls the position module, so `no_token_positional_embeddings
    =False` (the default) is ALiBi only in a checkpoint the fork wrote; its cfg['model'] holds `FORK_MARKER`.
    Legacy `args` checkpoints hold every option, so for them only the explicit flags can be checked.
    """
    if "decoder.embed_positions.weight" in state_dict:
        raise ConversionError(
            "the checkpoint has trained position embeddings (decoder.embed_positions.weight, decoder_learned_pos="
            f"{fairseq_model_field(model_cfg, 'decoder_learned_pos')!r}): it is not an ALiBi model, and dropping "
            "them would change its predictions. Only checkpoints of the ALiBi fork convert."
        )
    if fairseq_model_field(model_cfg, "decoder_learned_pos"):
        raise ConversionError(
            "the checkpoint sets decoder_learned_pos=True (learned position embeddings): it is not an ALiBi model. "
            "Only checkpoints of the ALiBi fork convert."
        )
    if not legacy and FORK_MARKER not in model_cfg:
        positions = fairseq_model_field(model_cfg, "no_token_positional_embeddings")
        what = "no position information at all" if positions else "sinusoidal position embeddings"
        raise ConversionError(
            f"the checkpoint has no_token_positional_embeddings={positions!r} and its cfg['model'] lacks "
            f"{FORK_MARKER!r}, the field the ALiBi fork adds: it was written by upstream fairseq, whose model uses "
            f"{what}, not ALiBi. Only checkpoints of the ALiBi fork convert."
        )


def alibi_config_from_fairseq(model_cfg: dict[str, Any], vocab_size: int) -> AlibiConfig:
    """The `AlibiConfig` equivalent to a fairseq `cfg['model']` (or legacy `vars(args)`)."""
    arch = model_cfg.get("_name") or model_cfg.get("arch")
    if arch not in SUPPORTED_ARCHS:
        raise ConversionError(f"Unsupported fairseq arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}.")

    def opt(name: str) -> Any:
        return fairseq_model_field(model_cfg, name)

    for flag in ("character_embeddings", "layernorm_embedding", "decoder_layers_to_keep"):
        if opt(flag):
            raise ConversionError(
                f"The checkpoint uses fairseq option {flag}={opt(flag)!r}, which AlibiForCausalLM does not implement."
            )
    if opt("activation_fn") not in ACTIVATIONS:
        raise ConversionError(f"activation_fn={opt('activation_fn')!r} is not supported; known: {sorted(ACTIVATIONS)}.")
    hidden, in_dim, out_dim = opt("decoder_embed_dim"), opt("decoder_input_dim"), opt("decoder_output_dim")
    softmax_cutoffs = _without_vocab(opt("adaptive_softmax_cutoff"), vocab_size)
    normalize_before = bool(opt("decoder_normalize_before"))
    return AlibiConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=opt("decoder_layers"),
        num_attention_heads=opt("decoder_attention_heads"),
        intermediate_size=opt("decoder_ffn_embed_dim"),
        activation_function=ACTIVATIONS[opt("activation_fn")],
        hidden_dropout=opt("dropout"),
        attention_dropout=opt("attention_dropout"),
        activation_dropout=max(opt("activation_dropout"), opt("relu_dropout") or 0.0),  # relu_dropout: old name
        layer_norm_eps=1e-5,
        normalize_before=normalize_before,
        final_layer_norm=normalize_before and not opt("no_decoder_final_norm"),
        scale_embedding=not opt("no_scale_embedding"),
        input_embedding_size=in_dim if in_dim != hidden else None,
        output_embedding_size=out_dim if out_dim != hidden else None,
        tie_word_embeddings=bool(opt("share_decoder_input_output_embed")) and softmax_cutoffs is None,
        adaptive_input=bool(opt("adaptive_input")),
        adaptive_input_cutoffs=(
            _without_vocab(opt("adaptive_input_cutoff"), vocab_size) if opt("adaptive_input") else None
        ),
        adaptive_input_factor=opt("adaptive_input_factor"),
        adaptive_softmax_cutoffs=softmax_cutoffs,
        adaptive_softmax_factor=opt("adaptive_softmax_factor"),
        adaptive_softmax_dropout=opt("adaptive_softmax_dropout"),
        tie_adaptive_weights=bool(opt("tie_adaptive_weights")),
        tie_adaptive_proj=bool(opt("tie_adaptive_proj")),
        position_encoding="alibi",
        train_seq_len=opt("tokens_per_sample"),  # metadata only: ALiBi has no length cap
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )


def _without_vocab(cutoffs: list[int] | None, vocab_size: int) -> list[int] | None:
    # fairseq accepts cutoff lists that end with the vocabulary size; AlibiConfig wants only the inner edges.
    if cutoffs and cutoffs[-1] == vocab_size:
        cutoffs = cutoffs[:-1]
    return cutoffs or None


def checkpoint_vocab_size(state_dict: dict[str, torch.Tensor]) -> int:
    """Rows of the input embedding (plain) or the sum of the adaptive-input band sizes."""
    if "decoder.embed_tokens.weight" in state_dict:
        return state_dict["decoder.embed_tokens.weight"].shape[0]
    bands = [v for k, v in state_dict.items() if re.fullmatch(r"decoder\.embed_tokens\.embeddings\.\d+\.0\.weight", k)]
    if not bands:
        raise ConversionError("No input embedding in the checkpoint (decoder.embed_tokens.*): not a transformer_lm?")
    return sum(b.shape[0] for b in bands)


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: AlibiConfig) -> dict[str, torch.Tensor]:
    """Map fairseq keys to AlibiForCausalLM keys; raises ValueError naming unknown, missing or misshapen keys."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        target = _target_key(key)
        if target is False:
            unknown.append(key)
        elif target is not None:
            converted[target] = tensor
    if unknown:
        raise ConversionError(f"Unknown fairseq keys (not a supported transformer_lm layout): {unknown}")
    _check_tied_copies(state_dict, config)
    _drop_tied(converted, config)
    _split_head(converted, config)
    _check_against_model(converted, config)
    return converted


def _target_key(key: str) -> str | None | bool:
    for pattern, target in _COMPILED:
        if pattern.fullmatch(key):
            return None if target is None else pattern.sub(target, key)
    return False


def _tied_copies(config: AlibiConfig) -> list[tuple[str, str]]:
    """(duplicate key, source key) pairs fairseq saves twice when weights are tied."""
    emb, asm = "decoder.embed_tokens.embeddings", "decoder.adaptive_softmax"
    pairs = []
    if config.tie_adaptive_weights:
        pairs.append((f"{asm}.head.word_proj.weight", f"{emb}.0.0.weight"))
        pairs += [
            (f"{asm}.tail.{t}.2.weight", f"{emb}.{t + 1}.0.weight") for t in range(len(config.adaptive_softmax_cutoffs))
        ]
    if config.tie_adaptive_proj:
        pairs += [
            (f"{asm}.tail.{t}.0.weight", f"{emb}.{t + 1}.1.weight") for t in range(len(config.adaptive_softmax_cutoffs))
        ]
    if config.tie_word_embeddings:
        pairs.append(("decoder.output_projection.weight", "decoder.embed_tokens.weight"))
    return pairs


def _check_tied_copies(state_dict: dict[str, torch.Tensor], config: AlibiConfig) -> None:
    # Storage-shared (fp32) or duplicated (fp16 training upcasts each copy): either way they must be equal.
    for copy, source in _tied_copies(config):
        if copy in state_dict and source in state_dict and not torch.equal(state_dict[copy], state_dict[source]):
            raise ConversionError(
                f"{copy} should be a tied copy of {source} but differs; the checkpoint is inconsistent."
            )


def _drop_tied(converted: dict[str, torch.Tensor], config: AlibiConfig) -> None:
    if config.tie_word_embeddings:
        converted.pop("lm_head.weight", None)
    for t in range(len(config.adaptive_softmax_cutoffs or [])):
        if config.tie_adaptive_weights:
            converted.pop(f"lm_head.tails.{t}.weight", None)
        if config.tie_adaptive_proj:
            converted.pop(f"lm_head.tail_projections.{t}.weight", None)


def _split_head(converted: dict[str, torch.Tensor], config: AlibiConfig) -> None:
    """An untied fairseq head is one Linear with c1 word rows then one cluster row per tail."""
    head = converted.pop("lm_head.head.weight", None)
    if head is not None:
        c1 = config.adaptive_softmax_cutoffs[0]
        converted["lm_head.head.weight"], converted["lm_head.cluster.weight"] = head[:c1], head[c1:]


def _check_against_model(converted: dict[str, torch.Tensor], config: AlibiConfig) -> None:
    with torch.device("meta"):
        expected = {k: v.shape for k, v in AlibiForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    wrong = [
        f"{k}: {tuple(converted[k].shape)} vs {tuple(expected[k])}"
        for k in converted
        if k in expected and converted[k].shape != expected[k]
    ]
    if missing or extra or wrong:
        raise ConversionError(
            f"The checkpoint does not match its config. Missing: {missing}; unexpected: {extra}; shapes: {wrong}"
        )


def build_model(
    converted: dict[str, torch.Tensor], config: AlibiConfig, dtype: torch.dtype = torch.float32
) -> AlibiForCausalLM:
    """An AlibiForCausalLM holding `converted` (cast to `dtype`), without a random initialisation pass."""
    with torch.device("meta"):
        model = AlibiForCausalLM(config)
    weights = {k: v.to(dtype).contiguous() for k, v in converted.items()}
    if config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the shared Parameter: share it again
    return model.eval()


def convert_fairseq_checkpoint(
    checkpoint_path: str | Path,
    dict_path: str | Path,
    output_dir: str | Path,
    dtype: str = "float32",
    verify: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert a fairseq ALiBi checkpoint and its dict.txt into a `from_pretrained` folder.

    Args:
        checkpoint_path: fairseq `.pt` file (loaded without executing pickled code).
        dict_path: The `dict.txt` of the data-bin the model was trained on (not stored in checkpoints).
        output_dir: Destination; written in a temporary folder beside it and renamed at the end, so a
            failure leaves nothing behind.
        dtype: "float32" (default; parity is judged on fp32), "bfloat16" or "float16".
        verify: Compare the converted model's float32 log-probs with a fairseq-semantics forward of the
            original weights on a sample; fails above `VERIFY_TOLERANCE`.
        overwrite: Replace an existing `output_dir`.

    Returns:
        The output folder (config, safetensors, remote code, tokenizer, generation config, model card).
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}.")
    check_replaceable(output_dir, overwrite)  # before reading anything
    checkpoint = load_fairseq_checkpoint(checkpoint_path)
    dictionary = FairseqDictionary.load(dict_path)
    state_dict, model_cfg = checkpoint["state_dict"], checkpoint["model_cfg"]
    check_alibi_positions(model_cfg, state_dict, checkpoint["legacy"])
    vocab_size = checkpoint_vocab_size(state_dict)
    if len(dictionary) != vocab_size:
        raise ConversionError(
            f"{dict_path} gives {len(dictionary)} ids (4 specials + {len(dictionary) - 4} lines) but the checkpoint "
            f"embeds {vocab_size}; use the dict.txt of the data-bin this model was trained on."
        )
    config = alibi_config_from_fairseq(model_cfg, vocab_size)
    converted = convert_state_dict(state_dict, config)
    notes = [f"Converted from the fairseq checkpoint `{Path(checkpoint_path).name}` "
             f"(arch `{model_cfg.get('_name') or model_cfg.get('arch')}`, tokens_per_sample {config.train_seq_len})."]
    if verify:
        diff = verify_conversion(build_model(converted, config), state_dict, model_cfg)
        notes.append(f"Verified: max |log p| difference to a fairseq-semantics forward {diff:.2e} (float32).")
    model = build_model(converted, config, DTYPES[dtype])
    model.generation_config.bos_token_id = 2  # fairseq LMs start from </s>; <s> was never seen in training
    out = export_for_hub(
        model, output_dir, fairseq_tokenizer(dictionary), notes="\n\n".join(notes), overwrite=overwrite
    )
    logger.info("Converted %s -> %s", checkpoint_path, out)
    return out


def verify_conversion(
    model: AlibiForCausalLM,
    state_dict: dict[str, torch.Tensor],
    model_cfg: dict[str, Any],
    length: int = 32,
    seed: int = 0,
) -> float:
    """Max |log p| difference between `model` and `fairseq_log_probs` on a random sample; raises above tolerance.

    The reference is the fork's ALiBi forward, so it vouches only for ALiBi checkpoints: `convert_fairseq_checkpoint`
    refuses others first (`check_alibi_positions`).
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (1, length), generator=gen)
    ids[0, 0] = 2  # fairseq's start symbol
    with torch.no_grad():
        ours = model.float()(ids).logits.float().log_softmax(-1)  # adaptive logits are already log-probs
    expected = fairseq_log_probs(state_dict, model_cfg, ids)
    diff = (ours.double() - expected).abs().max().item()
    logger.info("verify: max |log p| difference %.3e over %d positions", diff, length)
    if not diff <= VERIFY_TOLERANCE:
        raise ConversionError(
            f"Verification failed: log-probs differ by {diff:.3e} (> {VERIFY_TOLERANCE}); "
            "please report this checkpoint."
        )
    return diff


def fairseq_log_probs(
    state_dict: dict[str, torch.Tensor], model_cfg: dict[str, Any], ids: torch.Tensor
) -> torch.Tensor:
    """fairseq's own forward (spec §1-2) on the ORIGINAL keys, float64, full vocabulary: (b, T, V).

    ALiBi in the fork's form (+slope * j on the causal mask); used only by `--verify`.
    """
    sd = {k: v.double() for k, v in state_dict.items() if v.is_floating_point()}

    def opt(name: str) -> Any:
        return fairseq_model_field(model_cfg, name)

    d, heads = opt("decoder_embed_dim"), opt("decoder_attention_heads")
    vocab = checkpoint_vocab_size(state_dict)
    if opt("adaptive_input"):
        edges = [0, *_without_vocab(opt("adaptive_input_cutoff"), vocab), vocab]
        x = ids.new_zeros(*ids.shape, d, dtype=torch.float64)
        for b, (lo, hi) in enumerate(pairwise(edges)):
            rows = (ids >= lo) & (ids < hi)
            x[rows] = F.linear(
                sd[f"decoder.embed_tokens.embeddings.{b}.0.weight"][ids[rows] - lo],
                sd[f"decoder.embed_tokens.embeddings.{b}.1.weight"],
            )
    else:
        x = sd["decoder.embed_tokens.weight"][ids]
    x = x * (1.0 if opt("no_scale_embedding") else math.sqrt(d))
    if "decoder.project_in_dim.weight" in sd:
        x = F.linear(x, sd["decoder.project_in_dim.weight"])
    slopes = alibi_slopes(heads).double()  # tested equal to the fork's recursive rule for 1..64 heads
    T = ids.shape[1]
    mask = (  # (h, T, T)
        torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1) + slopes[:, None, None] * torch.arange(T)
    )
    for i in range(opt("decoder_layers")):
        x = _fairseq_layer(sd, f"decoder.layers.{i}.", x, mask, opt("decoder_normalize_before"), opt("activation_fn"))
    if "decoder.layer_norm.weight" in sd:
        x = F.layer_norm(x, (d,), sd["decoder.layer_norm.weight"], sd["decoder.layer_norm.bias"], 1e-5)
    if "decoder.project_out_dim.weight" in sd:
        x = F.linear(x, sd["decoder.project_out_dim.weight"])
    if opt("adaptive_softmax_cutoff") is None:
        return F.linear(x, sd["decoder.output_projection.weight"]).log_softmax(-1)
    return _fairseq_adaptive_log_probs(sd, model_cfg, x, vocab)


def _fairseq_layer(
    sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, mask: torch.Tensor, pre: bool, act: str
) -> torch.Tensor:
    def ln(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, h.shape[-1:], sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"], 1e-5)

    b, t, d = x.shape
    h = mask.shape[0]
    y = ln("self_attn_layer_norm", x) if pre else x
    q, k, v = (
        F.linear(y, sd[f"{p}self_attn.{n}_proj.weight"], sd[f"{p}self_attn.{n}_proj.bias"]).view(b, t, h, d // h)
        .transpose(1, 2)
        for n in "qkv"
    )
    attn = ((q * (d // h) ** -0.5) @ k.transpose(-1, -2) + mask).softmax(-1) @ v  # (b, h, T, d/h)
    y = F.linear(
        attn.transpose(1, 2).reshape(b, t, d), sd[p + "self_attn.out_proj.weight"], sd[p + "self_attn.out_proj.bias"]
    )
    x = x + y if pre else ln("self_attn_layer_norm", x + y)
    y = ln("final_layer_norm", x) if pre else x
    y = F.linear(y, sd[p + "fc1.weight"], sd[p + "fc1.bias"])
    y = F.relu(y) if act == "relu" else F.gelu(y, approximate="none" if act == "gelu" else "tanh")
    y = F.linear(y, sd[p + "fc2.weight"], sd[p + "fc2.bias"])
    return x + y if pre else ln("final_layer_norm", x + y)


def _fairseq_adaptive_log_probs(
    sd: dict[str, torch.Tensor], model_cfg: dict[str, Any], x: torch.Tensor, vocab: int
) -> torch.Tensor:
    edges = [0, *_without_vocab(fairseq_model_field(model_cfg, "adaptive_softmax_cutoff"), vocab), vocab]
    asm, emb = "decoder.adaptive_softmax.", "decoder.embed_tokens.embeddings."
    tied = fairseq_model_field(model_cfg, "tie_adaptive_weights")
    tie_proj = fairseq_model_field(model_cfg, "tie_adaptive_proj")
    if tied:
        head = torch.cat([F.linear(x, sd[emb + "0.0.weight"]), F.linear(x, sd[asm + "head.class_proj.weight"])], -1)
    else:
        head = F.linear(x, sd[asm + "head.weight"])
    head = head.log_softmax(-1)  # (b, T, c1 + n_tail)
    parts = [head[..., : edges[1]]]
    for t in range(len(edges) - 2):
        proj = F.linear(x, sd[f"{emb}{t + 1}.1.weight"].t() if tied and tie_proj else sd[f"{asm}tail.{t}.0.weight"])
        table = sd[f"{emb}{t + 1}.0.weight"] if tied else sd[f"{asm}tail.{t}.2.weight"]
        parts.append(F.linear(proj, table).log_softmax(-1) + head[..., edges[1] + t, None])
    return torch.cat(parts, -1)


def main(argv: list[str] | None = None) -> int:
    """`alibi-lm convert-fairseq CHECKPOINT.pt --dict dict.txt --output DIR [--dtype ...] [--verify]`."""
    parser = argparse.ArgumentParser(prog="alibi-lm convert-fairseq", description=main.__doc__)
    parser.add_argument("checkpoint", help="fairseq .pt checkpoint (never unpickled unsafely)")
    parser.add_argument("--dict", required=True, dest="dict_path", help="dict.txt of the model's data-bin")
    parser.add_argument("--output", required=True, help="destination folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--verify", action="store_true", help="compare with a fairseq-semantics forward on a sample")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = convert_fairseq_checkpoint(
        args.checkpoint, args.dict_path, args.output, args.dtype, args.verify, args.overwrite
    )
    print(f"Converted model folder: {out}")
    return 0


__all__ = [
    "ConversionError",
    "KEY_MAP",
    "SUPPORTED_ARCHS",
    "alibi_config_from_fairseq",
    "build_model",
    "check_alibi_positions",
    "checkpoint_vocab_size",
    "convert_fairseq_checkpoint",
    "convert_state_dict",
    "fairseq_log_probs",
    "main",
    "verify_conversion",
]
