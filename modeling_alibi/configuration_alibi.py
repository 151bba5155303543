"""Configuration of the ALiBi causal language model (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022).

This file ships to the Hub as remote code: it imports only the standard library and transformers.
"""

from __future__ import annotations

import math
from itertools import pairwise

from transformers import PreTrainedConfig

POSITION_ENCODINGS = ("alibi", "sinusoidal", "rotary", "learned", "none")
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")
# Float fields: (lowest, highest, lowest allowed, highest allowed). Every one must also be finite.
FLOAT_RANGES = {
    "hidden_dropout": (0.0, 1.0, True, False),
    "attention_dropout": (0.0, 1.0, True, False),
    "activation_dropout": (0.0, 1.0, True, False),
    "adaptive_softmax_dropout": (0.0, 1.0, True, False),
    "layer_norm_eps": (0.0, math.inf, False, False),
    "alibi_bias_max": (0.0, math.inf, False, False),
    "rope_theta": (0.0, math.inf, False, False),
    "initializer_range": (0.0, math.inf, True, False),
    "adaptive_input_factor": (0.0, math.inf, False, False),
    "adaptive_softmax_factor": (0.0, math.inf, False, False),
}
# Integer fields that are optional: None, or a positive integer.
OPTIONAL_SIZES = ("input_embedding_size", "output_embedding_size", "train_seq_len", "max_position_embeddings")


def check_float(name: str, value: object, low: float, high: float, low_ok: bool, high_ok: bool) -> None:
    """Raise ValueError naming `name` and its allowed range unless `value` is a finite number inside it."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    inside = number and math.isfinite(value) and (low <= value if low_ok else low < value)
    inside = inside and (value <= high if high_ok else value < high)
    if not inside:
        interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
        raise ValueError(f"{name}={value!r} must be a finite number in {interval}.")


def check_optional_size(name: str, value: object) -> None:
    """Raise ValueError unless `value` is None or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name}={value!r} must be a positive integer or None.")


class AlibiConfig(PreTrainedConfig):
    r"""Configuration for [`AlibiModel`] and [`AlibiForCausalLM`].

    The fields express fairseq's `transformer_lm` family, with the fairseq flag named in a comment where it
    differs. Defaults give the paper's WikiText-103 block shape (16 layers, d 1024, 8 heads, ffn 4096) with a
    plain tied embedding.

    Args:
        vocab_size: Size of the vocabulary.
        hidden_size: Model width `d` (fairseq `decoder_embed_dim`).
        num_hidden_layers: Number of decoder blocks.
        num_attention_heads: Number of attention heads; must divide `hidden_size`.
        intermediate_size: Width of the feed-forward layer (fairseq `decoder_ffn_embed_dim`).
        activation_function: Feed-forward nonlinearity.
        hidden_dropout: Dropout on embeddings and residual branches (fairseq `dropout`).
        attention_dropout: Dropout on attention probabilities.
        activation_dropout: Dropout after the feed-forward nonlinearity.
        layer_norm_eps: LayerNorm epsilon.
        normalize_before: Pre-norm blocks if True, post-norm if False (fairseq `decoder_normalize_before`).
        final_layer_norm: Apply a LayerNorm after the last block (fairseq: pre-norm and not `no_decoder_final_norm`).
        scale_embedding: Multiply token embeddings by sqrt(hidden_size) (fairseq: not `no_scale_embedding`).
        use_bias: Bias terms on the attention and feed-forward projections.
        input_embedding_size: Width of the token embedding when it differs from `hidden_size`; a bias-free
            projection maps it to `hidden_size` (fairseq `decoder_input_dim`, `project_in_dim`).
        output_embedding_size: Width fed to the output embedding when it differs from `hidden_size`
            (fairseq `decoder_output_dim`, `project_out_dim`).
        tie_word_embeddings: Share the input and output token embeddings.
        adaptive_input: Use adaptive input embeddings (Baevski & Auli, 2019).
        adaptive_input_cutoffs: Band boundaries of the adaptive input, without the vocabulary size.
        adaptive_input_factor: Each band's width is `input_embedding_size // factor**band`.
        adaptive_softmax_cutoffs: Band boundaries of an adaptive softmax output layer; None for a plain softmax.
        adaptive_softmax_factor: Width factor of the adaptive softmax tails.
        adaptive_softmax_dropout: Dropout inside each adaptive softmax tail.
        tie_adaptive_weights: Adaptive softmax reuses the adaptive input embedding tables.
        tie_adaptive_proj: Adaptive softmax tails reuse the adaptive input projections (transposed).
        position_encoding: `"alibi"` (default), or a baseline for comparisons: `"sinusoidal"`, `"rotary"`,
            `"learned"` (needs `max_position_embeddings`, which it caps the length to) or `"none"`.
        alibi_bias_max: The slopes are 2^(-alibi_bias_max * h / H) for h = 1..H (8 in the paper).
        train_seq_len: The sequence length the model was trained on. Metadata only: never a length cap.
        attention_window: If set to W, each query sees only keys at real-position distance i - j < W, in every
            backend, and the key/value cache keeps only the last W - 1 keys per layer, so streaming generation runs
            in constant memory. Exposed to transformers as `sliding_window`, which makes `DynamicCache(config=...)`
            and `StaticCache` build sliding-window layers. The cache drops keys by slot, so it matches the
            uncached model exactly under left padding (as generate() pads), not with padding inside a sequence.
            A sliding `StaticCache` hands attention a span of keys that moves each step, so compiled decoding with
            it runs on dynamic shapes (one recompile). None (default): full causal attention.
        alibi_truncation: If set to T, head h ignores keys at distance > T / m_h: their ALiBi penalty exceeds T,
            so each carries at most e^-T of the weight of an equally scored key at distance 0. An approximation
            that lets FlexAttention skip whole blocks; not supported by flash-attn. None (default) keeps every key.
        max_position_embeddings: Only for `position_encoding="learned"`. Left None otherwise, because
            `generate()` clamps its length to this value when it is set.
        rope_theta: Base of the rotary frequencies for `position_encoding="rotary"`.
        initializer_range: Standard deviation of the normal weight init.
        use_cache: Return the key/value cache from the forward pass.
    """

    model_type = "alibi"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # transformers' caches read `sliding_window` to decide whether a layer keeps only its last keys.
    attribute_map = {"sliding_window": "attention_window"}

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        num_hidden_layers: int = 16,
        num_attention_heads: int = 8,
        intermediate_size: int = 4096,
        activation_function: str = "relu",
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        normalize_before: bool = True,
        final_layer_norm: bool = True,
        scale_embedding: bool = True,
        use_bias: bool = True,
        input_embedding_size: int | None = None,
        output_embedding_size: int | None = None,
        tie_word_embeddings: bool = True,
        adaptive_input: bool = False,
        adaptive_input_cutoffs: list[int] | None = None,
        adaptive_input_factor: float = 4.0,
        adaptive_softmax_cutoffs: list[int] | None = None,
        adaptive_softmax_factor: float = 4.0,
        adaptive_softmax_dropout: float = 0.0,
        tie_adaptive_weights: bool = False,
        tie_adaptive_proj: bool = False,
        position_encoding: str = "alibi",
        alibi_bias_max: float = 8.0,
        train_seq_len: int | None = None,
        attention_window: int | None = None,
        alibi_truncation: float | None = None,
        max_position_embeddings: int | None = None,
        rope_theta: float = 10000.0,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int | None = 0,
        pad_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.activation_function = activation_function
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.layer_norm_eps = layer_norm_eps
        self.normalize_before = normalize_before
        self.final_layer_norm = final_layer_norm
        self.scale_embedding = scale_embedding
        self.use_bias = use_bias
        self.input_embedding_size = input_embedding_size
        self.output_embedding_size = output_embedding_size
        self.adaptive_input = adaptive_input
        self.adaptive_input_cutoffs = list(adaptive_input_cutoffs) if adaptive_input_cutoffs else None
        self.adaptive_input_factor = adaptive_input_factor
        self.adaptive_softmax_cutoffs = list(adaptive_softmax_cutoffs) if adaptive_softmax_cutoffs else None
        self.adaptive_softmax_factor = adaptive_softmax_factor
        self.adaptive_softmax_dropout = adaptive_softmax_dropout
        self.tie_adaptive_weights = tie_adaptive_weights
        self.tie_adaptive_proj = tie_adaptive_proj
        self.position_encoding = position_encoding
        self.alibi_bias_max = alibi_bias_max
        self.train_seq_len = train_seq_len
        self.attention_window = attention_window
        self.alibi_truncation = alibi_truncation
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self._validate(tie_word_embeddings)
        if adaptive_input or self.adaptive_softmax_cutoffs:
            # Adaptive layers tie through tie_adaptive_weights/tie_adaptive_proj, never through a plain lm_head.
            tie_word_embeddings = False
        super().__init__(
            bos_token_id=bos_token_id,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def input_dim(self) -> int:
        """Width of the token embedding before any input projection."""
        return self.input_embedding_size or self.hidden_size

    @property
    def output_dim(self) -> int:
        """Width of the final hidden state fed to the output layer."""
        return self.output_embedding_size or self.hidden_size

    def _validate(self, tie_word_embeddings: bool) -> None:
        """Raise ValueError naming the offending option and the fix; called once from __init__."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide hidden_size={self.hidden_size}: "
                "pick a head count that divides the width (each head gets hidden_size // num_attention_heads dims)."
            )
        for name, limits in FLOAT_RANGES.items():
            check_float(name, getattr(self, name), *limits)
        for name in OPTIONAL_SIZES:
            check_optional_size(name, getattr(self, name))
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r} is not one of {ACTIVATIONS}.")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding={self.position_encoding!r} is not one of {POSITION_ENCODINGS}.")
        self._validate_long_context()
        if self.position_encoding == "learned" and not self.max_position_embeddings:
            raise ValueError('position_encoding="learned" needs max_position_embeddings (the longest length).')
        if self.position_encoding == "rotary" and self.head_dim % 2:
            raise ValueError(f'position_encoding="rotary" needs an even head dim, got {self.head_dim}.')
        self._validate_adaptive()
        adaptive = self.adaptive_input or self.adaptive_softmax_cutoffs
        if tie_word_embeddings and not adaptive and self.input_dim != self.output_dim:
            raise ValueError(
                f"tie_word_embeddings needs input_embedding_size == output_embedding_size, got {self.input_dim} and "
                f"{self.output_dim}; set tie_word_embeddings=False."
            )

    def _validate_long_context(self) -> None:
        window, truncation = self.attention_window, self.alibi_truncation
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
            raise ValueError(
                f"attention_window={window!r} must be a positive integer (keys per query, the query included) "
                "or None for full causal attention."
            )
        if truncation is not None:
            number = isinstance(truncation, (int, float)) and not isinstance(truncation, bool)
            if not number or not math.isfinite(truncation) or not truncation > 0:
                raise ValueError(
                    f"alibi_truncation={truncation!r} must be a positive threshold T (e.g. 20: dropped keys carry at "
                    "most e^-20 of the weight) or None to keep every key."
                )
            if self.position_encoding != "alibi":
                raise ValueError(
                    f'alibi_truncation needs position_encoding="alibi", got {self.position_encoding!r}: the other '
                    "encodings have no distance penalty to truncate. Set alibi_truncation=None."
                )

    def _validate_adaptive(self) -> None:
        for name in ("adaptive_input_cutoffs", "adaptive_softmax_cutoffs"):
            cutoffs = getattr(self, name)
            if cutoffs is None:
                continue
            edges = [0, *cutoffs, self.vocab_size]
            if any(a >= b for a, b in pairwise(edges)):
                raise ValueError(
                    f"{name}={cutoffs} must be strictly increasing and below vocab_size={self.vocab_size}."
                )
        if self.adaptive_input and not self.adaptive_input_cutoffs:
            raise ValueError("adaptive_input=True needs adaptive_input_cutoffs, e.g. [20000, 60000].")
        if self.tie_adaptive_weights:
            if not (self.adaptive_input and self.adaptive_softmax_cutoffs):
                raise ValueError("tie_adaptive_weights needs both adaptive_input and adaptive_softmax_cutoffs.")
            if self.adaptive_input_cutoffs != self.adaptive_softmax_cutoffs:
                raise ValueError(
                    "tie_adaptive_weights needs adaptive_input_cutoffs == adaptive_softmax_cutoffs, got "
                    f"{self.adaptive_input_cutoffs} and {self.adaptive_softmax_cutoffs}."
                )
            if self.adaptive_input_factor != self.adaptive_softmax_factor:
                raise ValueError("tie_adaptive_weights needs adaptive_input_factor == adaptive_softmax_factor.")
            if self.input_dim != self.output_dim:
                raise ValueError("tie_adaptive_weights needs input_embedding_size == output_embedding_size.")
        if self.tie_adaptive_proj and not self.tie_adaptive_weights:
            raise ValueError("tie_adaptive_proj needs tie_adaptive_weights=True.")


__all__ = ["AlibiConfig"]
