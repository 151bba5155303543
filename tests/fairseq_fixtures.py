"""Builders of small test checkpoints in exactly fairseq's on-disk layout (shared/spec/fairseq.md §3).

What is reproduced: top-level keys and their order; `cfg` as plain dicts with every section and a flat
`cfg['model']` (cutoffs as comma strings, factors as floats); state-dict key names, shapes and ORDER
(module registration order: buffers before children, attention k, v, q, out); garbage `_float_tensor`
buffers (inf/nan) and `version` tensors; tied weights that share storage (fp32), that are duplicated
float32 copies of fp16-rounded values (`--fp16` training + `utils.move_to_cpu`), or float16 tensors.
The legacy form has an `argparse.Namespace` in `args` and no `cfg`.

Independent of modeling_alibi: nothing here imports it.
"""

from __future__ import annotations

import argparse
import math
import os
from itertools import pairwise
from typing import Any

import torch

ARCHS = ("transformer_lm_wiki103", "transformer_lm", "transformer_lm_big", "transformer_lm_gpt")
VARIANTS = ("fp32", "fp16_trained", "float16")
CFG_SECTIONS = (
    "_name", "common", "common_eval", "distributed_training", "dataset", "optimization", "checkpoint", "bmuf",
    "generation", "eval_lm", "interactive", "model", "task", "criterion", "optimizer", "lr_scheduler",
    "scoring", "bpe", "tokenizer", "simul_type",
)
TOP_LEVEL_KEYS = (
    "args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state", "last_optimizer_state",
)
LEGACY_TOP_LEVEL_KEYS = ("args", "model", "optimizer_history", "extra_state", "last_optimizer_state")


def fairseq_model_cfg(
    arch: str = "transformer_lm_wiki103",
    *,
    heads: int = 4,
    layers: int = 2,
    embed_dim: int | None = None,
    ffn_dim: int | None = None,
    io_dim: int | None = None,
    share_input_output_embed: bool = False,
    tokens_per_sample: int = 16,
    max_tokens: int | None = None,
    cutoffs: str = "20,60",
) -> dict[str, Any]:
    """A resolved, flat `cfg['model']` as fairseq writes it, for a small model of `arch`.

    `io_dim` is `decoder_input_dim = decoder_output_dim` of the plain `transformer_lm` (it differs from
    `embed_dim` there, giving `project_in_dim`/`project_out_dim`); the named archs tie both to embed_dim.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not one of {ARCHS}.")
    embed_dim = embed_dim or 8 * heads
    wiki = arch == "transformer_lm_wiki103"
    plain = arch == "transformer_lm"
    io = (io_dim or embed_dim - 8) if plain else embed_dim
    cfg: dict[str, Any] = {
        "_name": arch,
        "activation_fn": "gelu" if arch == "transformer_lm_gpt" else "relu",
        "dropout": 0.3 if wiki else 0.1,
        "attention_dropout": 0.0 if plain else 0.1,
        "activation_dropout": 0.1 if wiki else 0.0,
        "relu_dropout": 0.0,
        "decoder_embed_dim": embed_dim,
        "decoder_output_dim": io,
        "decoder_input_dim": io,
        "decoder_ffn_embed_dim": ffn_dim or 2 * embed_dim,
        "decoder_layers": layers,
        "decoder_attention_heads": heads,
        "decoder_normalize_before": not plain,  # base_lm_architecture forces pre-norm on named archs
        "no_decoder_final_norm": wiki,
        "adaptive_softmax_cutoff": cutoffs if wiki else None,
        "adaptive_softmax_dropout": 0.2 if wiki else 0.0,
        "adaptive_softmax_factor": 4.0,
        "no_token_positional_embeddings": False,
        "share_decoder_input_output_embed": share_input_output_embed,
        "character_embeddings": False,
        "character_filters": "[(1, 64), (2, 128), (3, 192), (4, 256), (5, 256), (6, 256), (7, 256)]",
        "character_embedding_dim": 4,
        "char_embedder_highway_layers": 2,
        "adaptive_input": wiki,
        "adaptive_input_factor": 4.0,
        "adaptive_input_cutoff": cutoffs if wiki else None,
        "tie_adaptive_weights": wiki,
        "tie_adaptive_proj": wiki,
        "decoder_learned_pos": False,
        "layernorm_embedding": False,
        "no_scale_embedding": False,
        "checkpoint_activations": False,
        "offload_activations": False,
        "decoder_layerdrop": 0.0,
        "decoder_layers_to_keep": None,
        "quant_noise_pq": 0.0,
        "quant_noise_pq_block_size": 8,
        "quant_noise_scalar": 0.0,
        "min_params_to_wrap": 100000000,
        "base_layers": 0,
        "base_sublayers": 1,
        "base_shuffle": 1,
        "add_bos_token": False,
        "tokens_per_sample": tokens_per_sample,
        "max_target_positions": tokens_per_sample,
        "tpu": False,
        "max_tokens": max_tokens or 18 * tokens_per_sample,
    }
    return cfg


Layout = list[tuple[str, tuple[int, ...], str | None]]  # (key, shape, tied_to) per state-dict entry


def fairseq_state_dict_layout(model_cfg: dict[str, Any], vocab_size: int) -> Layout:
    """(key, shape, tied_to) for every state-dict entry, in fairseq's order. `tied_to` names the
    parameter this key shares (it appears earlier), or "garbage"/"version" for buffers."""
    c = model_cfg
    d = c["decoder_embed_dim"]
    in_dim, out_dim, ffn = c["decoder_input_dim"], c["decoder_output_dim"], c["decoder_ffn_embed_dim"]
    adaptive = c["adaptive_input"]
    layout: list[tuple[str, tuple[int, ...], str | None]] = [("decoder.version", (1,), "version")]
    if adaptive:
        bands = _bands(c["adaptive_input_cutoff"], vocab_size)
        layout.append(("decoder.embed_tokens._float_tensor", (1,), "garbage"))
        for b, (lo, hi) in enumerate(bands):
            dim = int(in_dim // c["adaptive_input_factor"] ** b)
            layout.append((f"decoder.embed_tokens.embeddings.{b}.0.weight", (hi - lo, dim), None))
            layout.append((f"decoder.embed_tokens.embeddings.{b}.1.weight", (d, dim), None))
        input_width = d  # AdaptiveInput.embedding_dim is its output dim: no project_in_dim
    else:
        layout.append(("decoder.embed_tokens.weight", (vocab_size, in_dim), None))
        input_width = in_dim
    if input_width != d:
        layout.append(("decoder.project_in_dim.weight", (d, input_width), None))
    if not c["no_token_positional_embeddings"]:
        layout.append(("decoder.embed_positions._float_tensor", (1,), "garbage"))  # built, never called
    for i in range(c["decoder_layers"]):
        p = f"decoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):  # MultiheadAttention registration order
            layout += [(f"{p}self_attn.{proj}.weight", (d, d), None), (f"{p}self_attn.{proj}.bias", (d,), None)]
        layout += [(f"{p}self_attn_layer_norm.weight", (d,), None), (f"{p}self_attn_layer_norm.bias", (d,), None)]
        layout += [(f"{p}fc1.weight", (ffn, d), None), (f"{p}fc1.bias", (ffn,), None)]
        layout += [(f"{p}fc2.weight", (d, ffn), None), (f"{p}fc2.bias", (d,), None)]
        layout += [(f"{p}final_layer_norm.weight", (d,), None), (f"{p}final_layer_norm.bias", (d,), None)]
    if c["decoder_normalize_before"] and not c["no_decoder_final_norm"]:
        layout += [("decoder.layer_norm.weight", (d,), None), ("decoder.layer_norm.bias", (d,), None)]
    if d != out_dim and not c["tie_adaptive_weights"]:
        layout.append(("decoder.project_out_dim.weight", (out_dim, d), None))
    if c["adaptive_softmax_cutoff"] is not None:
        layout += _adaptive_softmax_layout(c, vocab_size, out_dim)
    elif c["share_decoder_input_output_embed"]:
        layout.append(("decoder.output_projection.weight", (vocab_size, in_dim), "decoder.embed_tokens.weight"))
    else:
        layout.append(("decoder.output_projection.weight", (vocab_size, out_dim), None))
    return layout


def _adaptive_softmax_layout(c: dict[str, Any], vocab_size: int, out_dim: int) -> Layout:
    bands = _bands(c["adaptive_softmax_cutoff"], vocab_size)
    n_tail = len(bands) - 1
    tied, tie_proj = c["tie_adaptive_weights"], c["tie_adaptive_proj"]
    emb = "decoder.embed_tokens.embeddings"
    p = "decoder.adaptive_softmax."
    layout: list[tuple[str, tuple[int, ...], str | None]] = [(p + "version", (1,), "version")]
    if tied:
        c1, d0 = bands[0][1], int(c["decoder_input_dim"])
        if d0 != out_dim:
            raise ValueError("The fixtures do not build TiedHeadModule's extra word_proj Linear (input_dim != d_0).")
        layout += [
            (p + "head._float_tensor", (1,), "garbage"),
            (p + "head.word_proj.weight", (c1, d0), f"{emb}.0.0.weight"),
        ]
        layout.append((p + "head.class_proj.weight", (n_tail, out_dim), None))
    else:
        layout.append((p + "head.weight", (bands[0][1] + n_tail, out_dim), None))
    for t, (lo, hi) in enumerate(bands[1:]):
        dim = int(out_dim // c["adaptive_softmax_factor"] ** (t + 1))
        tie_p = f"{emb}.{t + 1}.1.weight" if tied and tie_proj else None
        layout.append((f"{p}tail.{t}.0.weight", (out_dim, dim) if tie_p else (dim, out_dim), tie_p))
        layout.append((f"{p}tail.{t}.2.weight", (hi - lo, dim), f"{emb}.{t + 1}.0.weight" if tied else None))
    return layout


def _bands(cutoff: str, vocab_size: int) -> list[tuple[int, int]]:
    edges = [0] + [int(x) for x in cutoff.split(",")]
    if edges[-1] < vocab_size:
        edges.append(vocab_size)
    return list(pairwise(edges))


def fairseq_state_dict(model_cfg: dict[str, Any], vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights in fairseq's layout; tied entries are the same tensor object."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i, (key, shape, tied_to) in enumerate(fairseq_state_dict_layout(model_cfg, vocab_size)):
        if tied_to == "version":
            sd[key] = torch.tensor([1], dtype=torch.int64) if "adaptive_softmax" in key else torch.tensor([3.0])
        elif tied_to == "garbage":  # torch.FloatTensor(1): uninitialised memory, never used
            sd[key] = torch.tensor([(math.inf, -math.inf, math.nan)[i % 3]], dtype=torch.float32)
        elif tied_to is not None:
            # TiedLinear keeps the very same Parameter (a tail projection is transposed only when used).
            sd[key] = sd[tied_to]
        else:
            sd[key] = _random_weight(key, shape, gen)
    _zero_padding_rows(sd)
    return sd


def _random_weight(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen)
    if "layer_norm" in key:  # non-trivial LayerNorm affine parameters
        return 1.0 + 0.2 * noise if key.endswith("weight") else 0.1 * noise
    if key.endswith("bias"):
        return 0.1 * noise
    if "embed_tokens.weight" in key:
        return noise * shape[1] ** -0.5  # fairseq's embedding init scale
    if "embeddings" in key and key.endswith(".0.weight"):
        # Half fairseq's scale: with no final LayerNorm (wt103) the tied tables set the logit scale, and this
        # keeps log-probs in a trained model's range (about -25..0), where fp32 parity at 1e-5 is meaningful.
        return noise * 0.5 * shape[1] ** -0.5
    # Xavier scale: the adaptive projections are used both ways (input, and transposed in the softmax tails).
    return noise * (2.0 / sum(shape)) ** 0.5


def _zero_padding_rows(sd: dict[str, torch.Tensor]) -> None:
    # Embedding(padding_idx=1) starts at zero and never gets a gradient, so trained tables keep a zero row.
    for key in ("decoder.embed_tokens.weight", "decoder.embed_tokens.embeddings.0.0.weight"):
        if key in sd:
            sd[key][1].zero_()


def _apply_variant(sd: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    if variant == "fp32":
        return sd
    if variant == "fp16_trained":
        # model.half() then utils.move_to_cpu: each tensor upcast on its own, so ties become equal copies.
        return {k: v.half().float() if v.is_floating_point() else v.clone() for k, v in sd.items()}
    if variant == "float16":  # model.half().state_dict(): half tensors, ties still one tensor
        halves: dict[int, torch.Tensor] = {}
        for v in sd.values():
            if v.is_floating_point() and id(v) not in halves:
                halves[id(v)] = v.half()
        return {k: halves.get(id(v), v) for k, v in sd.items()}
    raise ValueError(f"variant={variant!r} is not one of {VARIANTS}.")


def fairseq_full_cfg(model_cfg: dict[str, Any], fp16: bool) -> dict[str, Any]:
    """The whole `cfg` dict (OmegaConf.to_container of FairseqConfig) around `model_cfg`."""
    tps = model_cfg["tokens_per_sample"]
    wiki = model_cfg["_name"] == "transformer_lm_wiki103"
    sections: dict[str, Any] = {
        "_name": None,
        "common": {"_name": None, "no_progress_bar": False, "log_interval": 100, "log_format": None, "seed": 1,
                   "cpu": False, "tpu": False, "bf16": False, "fp16": fp16, "memory_efficient_fp16": False,
                   "fp16_no_flatten_grads": False, "fp16_init_scale": 128, "fp16_scale_window": None,
                   "fp16_scale_tolerance": 0.0, "min_loss_scale": 0.0001, "threshold_loss_scale": None,
                   "user_dir": None, "empty_cache_freq": 0, "all_gather_list_size": 16384,
                   "model_parallel_size": 1, "quantization_config_path": None, "profile": False},
        "common_eval": {"_name": None, "path": None, "post_process": None, "quiet": False,
                        "model_overrides": "{}", "results_path": None},
        "distributed_training": {"_name": None, "distributed_world_size": 8, "distributed_rank": 0,
                                 "distributed_backend": "nccl", "ddp_backend": "legacy_ddp",
                                 "fp16_ddp_backend": "c10d", "bucket_cap_mb": 25},
        "dataset": {"_name": None, "num_workers": 1, "skip_invalid_size_inputs_valid_test": False,
                    "max_tokens": model_cfg["max_tokens"], "batch_size": None, "required_batch_size_multiple": 8,
                    "dataset_impl": None, "data_buffer_size": 10, "train_subset": "train",
                    "valid_subset": "valid", "max_tokens_valid": model_cfg["max_tokens"], "batch_size_valid": None},
        "optimization": {"_name": None, "max_epoch": 0, "max_update": 286000, "clip_norm": 0.1,
                         "sentence_avg": False, "update_freq": [3 if wiki else 1], "lr": [1.0],
                         "stop_min_lr": -1.0, "use_bmuf": False},
        "checkpoint": {"_name": None, "save_dir": "checkpoints", "restore_file": "checkpoint_last.pt",
                       "reset_optimizer": False, "no_save_optimizer_state": False,
                       "best_checkpoint_metric": "loss", "maximize_best_checkpoint_metric": False},
        "bmuf": {"_name": None, "block_lr": 1.0, "block_momentum": 0.875, "global_sync_iter": 50,
                 "warmup_iterations": 500, "use_nbm": False, "average_sync": False, "distributed_world_size": 8},
        "generation": {"_name": None, "beam": 5, "nbest": 1, "max_len_a": 0.0, "max_len_b": 200,
                       "sampling": False, "temperature": 1.0},
        "eval_lm": {"_name": None, "output_word_probs": False, "output_word_stats": False,
                    "context_window": 0, "softmax_batch": 9223372036854775807},
        "interactive": {"_name": None, "buffer_size": 0, "input": "-"},
        "model": model_cfg,
        "task": {"_name": "language_modeling", "data": "data-bin/wikitext-103", "sample_break_mode": "none",
                 "tokens_per_sample": tps, "output_dictionary_size": -1, "self_target": False,
                 "future_target": False, "past_target": False, "add_bos_token": False,
                 "max_target_positions": None, "shorten_method": "none", "shorten_data_split_list": "",
                 "seed": 1, "dataset_impl": None, "data_buffer_size": 10, "tpu": False},
        "criterion": {"_name": "adaptive_loss" if wiki else "cross_entropy", "sentence_avg": False,
                      "ddp_backend": "legacy_ddp"},
        "optimizer": {"_name": "nag", "momentum": 0.99, "weight_decay": 0.0, "tpu": False, "lr": [1.0]},
        "lr_scheduler": {"_name": "cosine", "warmup_updates": 16000, "warmup_init_lr": 1e-07,
                         "max_lr": 1.0, "t_mult": 2.0, "period_updates": 270000.0, "lr_shrink": 0.75,
                         "lr": [1.0], "max_update": 286000},
        "scoring": {"_name": "bleu", "pad": 1, "eos": 2, "unk": 3},
        "bpe": None,
        "tokenizer": None,
        "simul_type": None,
    }
    return {name: sections[name] for name in CFG_SECTIONS}


def make_fairseq_checkpoint(
    arch: str = "transformer_lm_wiki103",
    *,
    vocab_size: int = 104,
    variant: str = "fp32",
    legacy: bool = False,
    seed: int = 0,
    **cfg_options: Any,
) -> dict[str, Any]:
    """The object fairseq's `Trainer.save_checkpoint` passes to `torch.save` (or the legacy `args` form).

    `cfg_options` go to `fairseq_model_cfg` (heads, layers, embed_dim, io_dim, share_input_output_embed,
    tokens_per_sample, ...). `variant`: "fp32" (storage-shared ties), "fp16_trained" (float32 tensors with
    fp16-rounded values, ties duplicated) or "float16" (half tensors, ties shared).
    """
    model_cfg = fairseq_model_cfg(arch, **cfg_options)
    state_dict = _apply_variant(fairseq_state_dict(model_cfg, vocab_size, seed), variant)
    fp16 = variant != "fp32"
    optimizer_history = [{
        "criterion_name": "AdaptiveLoss" if arch == "transformer_lm_wiki103" else "CrossEntropyCriterion",
        "optimizer_name": "FairseqNAG",
        "lr_scheduler_state": {"best": 3.0915, "last_optimizer_step": 1000},
        "num_updates": 1000,
    }]
    extra_state = {
        "metrics": {"train": [(0, "loss", "AverageMeter", {"val": 3.2, "sum": 320.0, "count": 100, "round": 3})]},
        "previous_training_time": 5412.7,
        "train_iterator": {"version": 2, "epoch": 2, "iterations_in_epoch": 0, "shuffle": True},
        "val_loss": 3.0915,
    }
    last_optimizer_state = {
        "state": {0: {"momentum_buffer": torch.zeros(3)}},
        "param_groups": [{"lr": 1.0, "momentum": 0.99, "weight_decay": 0.0, "params": [0]}],
        **({"loss_scale": 64.0} if fp16 else {}),
    }
    if legacy:
        return {
            "args": _legacy_args(model_cfg, fp16),
            "model": state_dict,
            "optimizer_history": optimizer_history,
            "extra_state": extra_state,
            "last_optimizer_state": last_optimizer_state,
        }
    return {
        "args": None,
        "cfg": fairseq_full_cfg(model_cfg, fp16),
        "model": state_dict,
        "criterion": None,
        "optimizer_history": optimizer_history,
        "task_state": {},
        "extra_state": extra_state,
        "last_optimizer_state": last_optimizer_state,
    }


def _legacy_args(model_cfg: dict[str, Any], fp16: bool) -> argparse.Namespace:
    """Pre-hydra `args`: one flat Namespace of every option; factors were ints on the command line."""
    fields = {k: v for k, v in model_cfg.items() if k != "_name"}
    fields.update(adaptive_input_factor=4, adaptive_softmax_factor=4)
    return argparse.Namespace(
        arch=model_cfg["_name"], task="language_modeling", data="data-bin/wikitext-103",
        criterion="adaptive_loss", optimizer="nag", lr=[1.0], lr_scheduler="cosine", seed=1, fp16=fp16,
        sample_break_mode="none", save_dir="checkpoints", **fields,
    )


def save_fairseq_checkpoint(
    path: str | os.PathLike, arch: str = "transformer_lm_wiki103", **kwargs: Any
) -> dict[str, Any]:
    """`make_fairseq_checkpoint(arch, **kwargs)` written with `torch.save`; returns the saved object."""
    state = make_fairseq_checkpoint(arch, **kwargs)
    torch.save(state, path)
    return state


def write_fixture_dict(path: str | os.PathLike, vocab_size: int = 104) -> list[str]:
    """A dict.txt whose 4 + n lines give `vocab_size` ids (counts descending); returns the words."""
    words = [f"w{k:04d}" for k in range(vocab_size - 4)]
    with open(path, "w", encoding="utf-8") as f:
        for k, word in enumerate(words):
            f.write(f"{word} {1000 - k}\n")
    return words


def wt103_model_cfg(tokens_per_sample: int = 512) -> dict[str, Any]:
    """`cfg['model']` of the released transformer_lm_wiki103 checkpoints (spec §1), at full size."""
    return fairseq_model_cfg(
        "transformer_lm_wiki103", heads=8, layers=16, embed_dim=1024, ffn_dim=4096,
        tokens_per_sample=tokens_per_sample, max_tokens=9216, cutoffs="20000,60000",
    )


WT103_VOCAB_SIZE = 267_744
