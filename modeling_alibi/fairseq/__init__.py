"""fairseq tooling: safe checkpoint reading, conversion to `AlibiForCausalLM` folders, the `dict.txt` dictionary
and its tokenizer, and fairseq-eval-lm's window rule."""

from .checkpoint import (
    FAIRSEQ_LM_DEFAULTS,
    CheckpointError,
    UnsafeCheckpointError,
    fairseq_model_field,
    load_fairseq_checkpoint,
    parse_cutoffs,
    resolved_model_config,
)
from .conversion import (
    KEY_MAP,
    SUPPORTED_ARCHS,
    alibi_config_from_fairseq,
    build_model,
    checkpoint_vocab_size,
    convert_fairseq_checkpoint,
    convert_state_dict,
    fairseq_log_probs,
    verify_conversion,
)
from .dictionary import (
    FairseqDictionary,
    build_fairseq_dictionary,
    count_words,
    fairseq_tokenizer,
    finalize_dictionary,
    write_fairseq_dictionary,
)
from .eval_lm import eval_lm_windows

__all__ = [
    "FAIRSEQ_LM_DEFAULTS",
    "KEY_MAP",
    "SUPPORTED_ARCHS",
    "CheckpointError",
    "FairseqDictionary",
    "UnsafeCheckpointError",
    "alibi_config_from_fairseq",
    "build_fairseq_dictionary",
    "build_model",
    "checkpoint_vocab_size",
    "convert_fairseq_checkpoint",
    "convert_state_dict",
    "count_words",
    "eval_lm_windows",
    "fairseq_log_probs",
    "fairseq_model_field",
    "fairseq_tokenizer",
    "finalize_dictionary",
    "load_fairseq_checkpoint",
    "parse_cutoffs",
    "resolved_model_config",
    "verify_conversion",
    "write_fairseq_dictionary",
]
