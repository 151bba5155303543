"""Safe loading of fairseq checkpoints and their model configuration.

Checkpoints are pickles. We unpickle them only with `torch.load(weights_only=True)`, which admits
tensors and primitive containers, plus one allow-listed class: the `argparse.Namespace` that holds
`args` in legacy (pre-hydra) fairseq checkpoints. Anything else is refused, never executed.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from typing import Any

import torch

from ..errors import UserError

logger = logging.getLogger(__name__)

# The only global a fairseq checkpoint legitimately needs beyond tensors and builtin containers.
LEGACY_SAFE_GLOBALS = [argparse.Namespace]

# Raw TransformerLanguageModelConfig defaults (fairseq ee0d5a0, fairseq/models/transformer_lm.py), used
# for fields an older checkpoint lacks. Named archs resolve their values before saving, so these only
# fill gaps; they are also what the plain `transformer_lm` arch trains with.
FAIRSEQ_LM_DEFAULTS: dict[str, Any] = {
    "activation_fn": "relu",
    "dropout": 0.1,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "relu_dropout": 0.0,
    "decoder_embed_dim": 512,
    "decoder_output_dim": 512,
    "decoder_input_dim": 512,
    "decoder_ffn_embed_dim": 2048,
    "decoder_layers": 6,
    "decoder_attention_heads": 8,
    "decoder_normalize_before": False,
    "no_decoder_final_norm": False,
    "adaptive_softmax_cutoff": None,
    "adaptive_softmax_dropout": 0.0,
    "adaptive_softmax_factor": 4.0,
    "no_token_positional_embeddings": False,
    "share_decoder_input_output_embed": False,
    "character_embeddings": False,
    "adaptive_input": False,
    "adaptive_input_factor": 4.0,
    "adaptive_input_cutoff": None,
    "tie_adaptive_weights": False,
    "tie_adaptive_proj": False,
    "decoder_learned_pos": False,
    "layernorm_embedding": False,
    "no_scale_embedding": False,
    "decoder_layerdrop": 0.0,
    "decoder_layers_to_keep": None,
    "quant_noise_pq": 0.0,
    "add_bos_token": False,
    "tokens_per_sample": None,
    "max_target_positions": None,
    "max_tokens": None,
}


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be read: truncated, corrupt, or not a fairseq checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs a global outside the allow-list; nothing was executed."""


def load_fairseq_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a fairseq checkpoint without executing pickled code.

    Args:
        path: A `.pt` file written by fairseq (`cfg` dict form, or legacy form with an `args` Namespace).

    Returns:
        A dict with `model_cfg` (flat model config: `cfg["model"]`, or `vars(args)` for legacy files),
        `state_dict` (the `model` tensors, in file order), `cfg` (the whole config as plain dicts; for
        legacy files `{"model": model_cfg}`) and `legacy` (True when the config came from `args`).

    Raises:
        FileNotFoundError: `path` does not exist.
        UnsafeCheckpointError: the pickle references a global outside the allow-list (named in the message).
        CheckpointError: the file is truncated, corrupt, or lacks `model` / a config.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    state = _safe_torch_load(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(
            f"{path} is not a fairseq checkpoint: expected a dict with a 'model' state dict, "
            f"got {type(state).__name__} with keys {sorted(state) if isinstance(state, dict) else None}."
        )
    cfg, legacy = _config_of(state, path)
    model_cfg = cfg.get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(
            f"{path}: cfg['model'] should be a dict of model options, got {type(model_cfg).__name__}."
        )
    state_dict = state["model"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: 'model' entries that are not tensors: {bad[:5]}.")
    return {"model_cfg": dict(model_cfg), "state_dict": state_dict, "cfg": cfg, "legacy": legacy}


def _safe_torch_load(path: str) -> Any:
    try:
        with torch.serialization.safe_globals(LEGACY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        offending = _unsafe_globals(path, str(err))
        if offending:
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: its pickle needs the global(s) {', '.join(offending)}, outside the "
                f"allow-list ({', '.join(_qualname(g) for g in LEGACY_SAFE_GLOBALS)}). It may be malicious: loading "
                "it could run arbitrary code. Nothing was executed. Only use such a file if you trust its source, "
                "and re-save its 'cfg'/'args' and 'model' entries as plain dicts and tensors."
            ) from None
        raise CheckpointError(
            f"Refusing to load {path}: the safe loader stopped at a pickle instruction it does not allow "
            f"({_refusal_detail(err)}). The file is corrupt, not a PyTorch checkpoint, or crafted to run code (it "
            "may be malicious); nothing was executed. Download or copy it again from a source you trust."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read ({type(err).__name__}: {_first_line(err)}). "
            "Download or copy it again."
        ) from None


def _refusal_detail(err: BaseException) -> str:
    """torch's reason for refusing, without its boilerplate (which suggests the unsafe loader)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(boilerplate) and "weights_only" not in line]
    return lines[-1] if lines else "refused"


def _unsafe_globals(path: str, message: str) -> list[str]:
    """Names of the refused globals: from torch's own scan of the file when it can, else from the error."""
    names = re.findall(r"GLOBAL ([\w.]+)", message)
    if not names:
        return []
    try:
        scanned = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) format or unreadable: the error message names the first one
        return names
    allowed = {_qualname(g) for g in LEGACY_SAFE_GLOBALS}
    return [g for g in scanned if g not in allowed] or names


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _config_of(state: dict[str, Any], path: str) -> tuple[dict[str, Any], bool]:
    cfg = state.get("cfg")
    if cfg is not None:
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path}: 'cfg' should be a plain dict, got {type(cfg).__name__}.")
        return cfg, False
    args = state.get("args")
    if isinstance(args, argparse.Namespace):
        model_cfg = dict(vars(args))
        model_cfg.setdefault("_name", model_cfg.get("arch"))
        return {"model": model_cfg}, True
    raise CheckpointError(f"{path}: no model configuration: 'cfg' is missing and 'args' is {type(args).__name__}.")


def parse_cutoffs(value: str | list[int] | tuple[int, ...] | None) -> list[int] | None:
    """fairseq cutoffs: a comma string "20000,60000" (or a list) to `[20000, 60000]`; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(
                f"Bad cutoff list {value!r}: expected comma-separated integers like '20000,60000'."
            ) from None
    return [int(v) for v in value]


def fairseq_model_field(model_cfg: dict[str, Any], name: str) -> Any:
    """A model option with fairseq's defaults and its backward-compatibility rules (base_lm_architecture).

    Cutoff fields come back as `list[int] | None`, factors as float.
    """
    if name == "no_decoder_final_norm":
        if "no_tie_adaptive_proj" in model_cfg:  # pre-2019 checkpoints: always without final norm
            return True
        if "decoder_final_norm" in model_cfg:
            return not model_cfg["decoder_final_norm"]
    if name == "tie_adaptive_proj" and "no_tie_adaptive_proj" in model_cfg and "tie_adaptive_proj" not in model_cfg:
        return not model_cfg["no_tie_adaptive_proj"]
    if name in ("decoder_input_dim", "decoder_output_dim") and name not in model_cfg:
        return fairseq_model_field(model_cfg, "decoder_embed_dim")
    if name not in model_cfg and name not in FAIRSEQ_LM_DEFAULTS:
        raise KeyError(f"Unknown fairseq model option {name!r}.")
    value = model_cfg.get(name, FAIRSEQ_LM_DEFAULTS.get(name))
    if name in ("adaptive_input_cutoff", "adaptive_softmax_cutoff"):
        return parse_cutoffs(value)
    if name in ("adaptive_input_factor", "adaptive_softmax_factor") and value is not None:
        return float(value)
    return value


def resolved_model_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Every option of FAIRSEQ_LM_DEFAULTS resolved through `fairseq_model_field`, plus `_name`."""
    resolved = {name: fairseq_model_field(model_cfg, name) for name in FAIRSEQ_LM_DEFAULTS}
    resolved["_name"] = model_cfg.get("_name", model_cfg.get("arch"))
    return resolved


__all__ = [
    "CheckpointError",
    "FAIRSEQ_LM_DEFAULTS",
    "UnsafeCheckpointError",
    "fairseq_model_field",
    "load_fairseq_checkpoint",
    "parse_cutoffs",
    "resolved_model_config",
]
