"""Fast decoding: a static KV cache and one CUDA graph per generated token.

`generate(..., cache_implementation="static")` compiles the model's step, but its own loop (logits processors,
stopping criteria, a growing attention mask) costs milliseconds of host time per token, several times the GPU
work of a 234M-parameter model at batch 1 (benchmarks/step_profile.py). `graph_generate` keeps everything on the
device instead: the step (mask update, forward, token choice, end-of-sequence bookkeeping) reads and writes only
preallocated buffers, so it is captured once as a CUDA graph and replayed per token with no host work.

    from modeling_alibi.generation import graph_generate
    sequences = graph_generate(model, input_ids, max_new_tokens=128)   # greedy; do_sample=True to sample

A plain greedy `model.generate(...)` on CUDA comes here by itself (`alibi_generation.AlibiGenerationMixin.generate`).

The cache is a `StaticCache` of prompt + max_new_tokens slots (or `max_cache_len`; a sliding-window cache when the
model has `attention_window`), so positions far beyond the training length are plain integers in the ALiBi bias.
The cache and the graph are kept for the next call with the same settings. On CPU, or with `cuda_graph=False`,
the same step runs as an ordinary loop; greedy results equal `generate`'s.

Hub payload: imports only torch, transformers, the standard library and its sibling files.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, StaticCache
from transformers.utils import logging

from .alibi_mask import empty_static_cache

if TYPE_CHECKING:  # the model module imports this one (generate's fast path), not the other way round
    from .modeling_alibi import AlibiForCausalLM

logger = logging.get_logger(__name__)

# A plain greedy `generate()` on these devices runs `graph_generate`; an empty tuple keeps transformers' loop.
GRAPH_GENERATE_DEVICES: tuple[str, ...] = ("cuda",)
# generate()'s cache is kept for the next call (no allocation, no capture) unless it holds more than this.
KEEP_CACHE_BYTES = 1 << 30

# GenerationConfig fields a plain greedy call may set freely: lengths and token ids (read below), the sampling
# warpers that greedy search never applies, assisted decoding's (no assistant), and metadata.
_FREE_FIELDS = {
    "max_new_tokens", "max_length", "eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id",
    "prefill_chunk_size", "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
    "eta_cutoff", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "assistant_lookbehind", "target_lookbehind", "is_assistant", "transformers_version", "disable_compile",
}
# Fields that change nothing at these values (transformers' defaults); any other value needs transformers' loop.
_NEUTRAL = {
    "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "use_cache": True, "min_length": 0,
    "early_stopping": False, "output_scores": False, "output_logits": False, "output_attentions": False,
    "output_hidden_states": False, "return_dict_in_generate": False, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "remove_invalid_values": False, "renormalize_logits": False,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "low_memory": False,
}


@dataclass
class _DecodeState:
    """Every tensor the step reads or writes; fixed addresses, as a CUDA graph requires."""

    mask: torch.Tensor  # (b, prompt + new) long: 1 for real tokens so far, 0 for padding and future slots
    token: torch.Tensor  # (b, 1) long: the token fed to the next step
    slot: torch.Tensor  # (1,) long: the mask column of `token`
    generated: torch.Tensor  # (b, cache slots) long: the new tokens, then padding
    count: torch.Tensor  # (1,) long: tokens written to `generated`
    finished: torch.Tensor  # (b,) bool


@torch.no_grad()
def graph_generate(
    model: AlibiForCausalLM,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    prefill_chunk_size: int = 2048,
    max_cache_len: int | None = None,
    cuda_graph: bool | None = None,
    compile: bool | None = None,
    check_every: int = 32,
) -> torch.LongTensor:
    """Generate `max_new_tokens` after `input_ids`, one CUDA-graph replay per token.

    Args:
        model: An `AlibiForCausalLM` in eval mode.
        input_ids: Prompt (b, q); left padding is allowed with `attention_mask`.
        max_new_tokens: Tokens to generate per row.
        attention_mask: 0/1 mask (b, q) of the prompt; None means no padding.
        do_sample: Sample from softmax(logits / temperature) (top-k filtered) instead of taking the argmax.
        eos_token_id: When set, a row that produced it emits `pad_token_id` afterwards; decoding stops early once
            every row has (checked every `check_every` tokens, the only host synchronizations).
        prefill_chunk_size: Prompt tokens per forward pass while filling the cache (bounded prefill memory).
        max_cache_len: Cache slots (default q + max_new_tokens). Calls with the same value reuse the compiled
            step; a new cache size compiles once more.
        cuda_graph: Capture the step as a CUDA graph; default: when the model is on CUDA. The cache and the
            graph are kept for the next call with the same batch size, cache size and sampling settings (it then
            skips allocation and capture); `release_decoders()` frees them. An unpadded prompt of at most
            `prefill_chunk_size` tokens (all rows together) is captured too, when a call repeats the last call's
            prompt shape.
        compile: Run the step through `torch.compile` (fused elementwise kernels: ~1.6x less GPU time per token
            on an H100); default: with `cuda_graph`. The first call compiles (seconds).

    Returns:
        (b, q + n) token ids, n <= max_new_tokens (fewer only when every row ended early).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1.")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 when sampling; use do_sample=False for greedy.")
    if model.training:
        raise ValueError("graph_generate needs the model in eval mode: call model.eval() first.")
    device = input_ids.device
    batch, prompt = input_ids.shape
    cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    compile = cuda_graph if compile is None else compile
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph=True needs the model and input_ids on a CUDA device.")

    total = prompt + max_new_tokens if max_cache_len is None else max_cache_len
    if total < prompt + max_new_tokens:
        raise ValueError(f"max_cache_len={total} cannot hold {prompt} prompt + {max_new_tokens} new tokens.")
    # The weights' address too: a captured graph reads the parameters it saw, so moved or reloaded weights (e.g.
    # model.half()) need a new decoder. And the modules: a graph and the stacked projections would run replaced
    # ones (an adapter injected after a call) as they were.
    weights = next(model.parameters())
    settings = (batch, total, str(device), do_sample, temperature, top_k, eos_token_id, pad_token_id, compile,
                weights.dtype, weights.data_ptr(), tuple(map(id, model.modules())))
    decoder = _DECODERS.get(id(model))
    if decoder is None or decoder.settings != settings:
        _DECODERS.clear()  # one per process: its cache holds device memory
        decoder = _DECODERS[id(model)] = _Decoder(model, settings, _chooser(do_sample, temperature, top_k))

    logits = decoder.start(input_ids, attention_mask, prefill_chunk_size, graph=cuda_graph)
    decoder.record(logits)  # the first new token, from the prompt
    for done in range(1, max_new_tokens):
        decoder.step(cuda_graph and max_new_tokens > 3)
        if eos_token_id is not None and done % check_every == 0 and bool(decoder.state.finished.all()):
            break
    n = int(decoder.state.count)
    if eos_token_id is not None and bool(decoder.state.finished.all()):
        n = _last_end(decoder.state.generated[:, :n], eos_token_id)  # as generate(): stop where the last row ended
    return torch.cat([input_ids, decoder.state.generated[:, :n]], dim=1)


def _last_end(generated: torch.Tensor, eos_token_id: int) -> int:
    """Columns up to and including the step where the last row produced its first end-of-sequence token."""
    first = (generated == eos_token_id).int().argmax(dim=1)  # (b,) every row has one: all rows finished
    return int(first.max()) + 1


class _Decoder:
    """A static cache, the state buffers and the captured step, reused by later calls with the same settings.

    Reuse skips the allocation, the warm-up steps and the capture (tens of milliseconds per call); the cache is
    reset in place, so the graph's addresses stay valid.
    """

    def __init__(self, model: AlibiForCausalLM, settings: tuple, choose):
        batch, total, device, do_sample, _, _, eos_token_id, pad_token_id, compile, _, _, _ = settings
        self.model, self.settings, self.eos_token_id, self.pad_token_id = model, settings, eos_token_id, pad_token_id
        compile_choice = COMPILE_CHOICE and compile and not do_sample
        self.choose = torch.compile(choose, dynamic=False, backend=_inductor({}, False)) if compile_choice else choose
        self.forward = _compiled(model) if compile else model
        self.cache = StaticCache(config=model.config, max_cache_len=total)
        self.state = _DecodeState(
            mask=torch.zeros(batch, total, dtype=torch.long, device=device),
            token=torch.zeros(batch, 1, dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device),
            generated=torch.full((batch, total), pad_token_id, dtype=torch.long, device=device),
            count=torch.zeros(1, dtype=torch.long, device=device),
            finished=torch.zeros(batch, dtype=torch.bool, device=device),
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0  # warm-up steps already run ahead of the loop
        self.stacked = _stacked_projections(model)
        # The captured prompt: its graph, input buffer and logits; the last unpadded one-chunk prompt's shape.
        self.prefill: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
        self.last_prompt: tuple[int, int] | None = None
        self.capture_prompts = model.config.attention_window is None  # a sliding cache counts on the host

    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, chunk_size: int,
              graph: bool = False) -> torch.Tensor:
        """Reset every buffer in place and prefill the prompt; returns the last prompt position's logits.

        With `graph`, an unpadded prompt of at most one chunk of tokens (all rows together) with the same shape as
        the last call's is captured as a CUDA graph on that second call, and replayed by later calls of that
        shape: such a prefill is host-bound when eager (a 2,048-token prompt on an H200: 12.4 ms of wall time for
        3.0 ms of GPU work, step_profile.py --parts prefill). The first call of a shape stays eager, so prompts of
        changing lengths pay nothing for it; the graph keeps one chunk's activations while the decoder lives."""
        shape = tuple(input_ids.shape)
        small = graph and attention_mask is None and shape[0] * shape[1] <= chunk_size
        if small and self.prefill is not None and self.prefill[1].shape == shape:
            prefill, prompt, logits = self.prefill
            prompt.copy_(input_ids)
            prefill.replay()
            return logits
        repeated, self.last_prompt = shape == self.last_prompt, shape if small else None
        if not (small and repeated and self.capture_prompts):
            return self.fill(input_ids, attention_mask, chunk_size)
        prompt = input_ids.clone()
        try:
            prefill, logits, captured = _captured(lambda: self.fill(prompt, None, chunk_size), warm_ups=1)
        except RuntimeError as error:  # a backend that cannot be captured: this decoder's prompts stay eager
            logger.warning(f"graph_generate: the prompt could not be captured as a CUDA graph ({error}); prompts "
                           "are prefilled eagerly.")
            self.capture_prompts = False
            return self.fill(input_ids, attention_mask, chunk_size)
        self.prefill = (prefill, prompt, captured)
        return logits

    def fill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
        """The eager prefill: every buffer reset in place, then the prompt through the model into the cache."""
        state, prompt = self.state, input_ids.shape[1]
        self.cache.reset()
        state.mask.zero_()
        state.mask[:, :prompt] = 1 if attention_mask is None else attention_mask  # the rest: future slots
        state.slot.fill_(prompt)
        state.generated.fill_(self.pad_token_id)
        state.count.zero_()
        state.finished.zero_()
        _restack(self.stacked)  # the weights as they are now: the graph reads these buffers
        # An unpadded prompt goes in without a mask: the model's fast unpadded path (cuDNN or the Triton prompt
        # kernel). In one chunk, it is known to start at an empty cache: no read of the cache length (a sync).
        prompt_mask = None if attention_mask is None else state.mask[:, :prompt]
        known_empty = prompt_mask is None and prompt <= chunk_size
        with empty_static_cache() if known_empty else contextlib.nullcontext():
            logits, _ = self.model.prefill(input_ids, attention_mask=prompt_mask, chunk_size=chunk_size,
                                           cache=self.cache)
        return logits

    def record(self, logits: torch.Tensor) -> None:
        _record(self.state, self.choose(logits), self.eos_token_id, self.pad_token_id)

    @torch.no_grad()
    def one_step(self) -> None:
        state = self.state
        state.mask.index_fill_(1, state.slot, 1)  # the fed token becomes a real key
        with _fused_projections(self.stacked):
            out = self.forward(state.token, attention_mask=state.mask, cache=self.cache, use_cache=True,
                               logits_to_keep=1)
        state.slot.add_(1)
        self.record(out.logits[:, -1])

    def step(self, graph: bool) -> None:
        if not graph:
            self.one_step()
            return
        if self.graph is None:
            self.graph, self.warm = _captured(self.one_step)[0], 2
        if self.warm:  # the capture's warm-up steps already produced this token
            self.warm -= 1
        else:
            self.graph.replay()


def _stacked_projections(model: AlibiForCausalLM) -> list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]]:
    """Per attention layer: (module, weight, bias) buffers for its q, k and v projections stacked (3 * hidden rows).

    The decode step runs one projection instead of three (`AlibiAttention.fused_qkv`), at the cost of a copy of
    those weights while the decoder lives. Empty when any projection is not a plain nn.Linear (LoRA, quantized
    layers): those keep their own forward, and the step its three projections."""
    from .modeling_alibi import AlibiAttention  # the model module imports this one

    attentions = [m for m in model.modules() if isinstance(m, AlibiAttention)]
    names = ("q_proj", "k_proj", "v_proj")
    if not all(type(getattr(a, name)) is torch.nn.Linear for a in attentions for name in names):
        return []
    stacked = []
    for attention in attentions:
        weight = attention.q_proj.weight
        bias = attention.q_proj.bias
        stacked.append((attention, weight.new_empty(3 * weight.shape[0], weight.shape[1]),
                        None if bias is None else bias.new_empty(3 * bias.shape[0])))
    return stacked


@torch.no_grad()
def _restack(stacked: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]]) -> None:
    """Copy the current q, k and v weights into the stacked buffers, in place (a captured graph reads them)."""
    for attention, weight, bias in stacked:
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        torch.cat([p.weight for p in projections], out=weight)
        if bias is not None:
            torch.cat([p.bias for p in projections], out=bias)


@contextlib.contextmanager
def _fused_projections(stacked: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]]):
    """The layers use their stacked projection inside the block only: prefill and other forwards keep three."""
    for attention, weight, bias in stacked:
        attention.fused_qkv = (weight, bias)
    try:
        yield
    finally:
        for attention, _, _ in stacked:
            del attention.fused_qkv  # back to the class default, None


def release_decoders() -> None:
    """Free the static cache and CUDA graph that `graph_generate` keeps for its next call with the same settings."""
    _DECODERS.clear()
    _COMPILED.clear()


def _record(state: _DecodeState, next_token: torch.Tensor, eos_token_id: int | None, pad_token_id: int) -> None:
    """Store the chosen (b,) tokens and feed them to the next step, all in place."""
    if eos_token_id is not None:
        next_token = torch.where(state.finished, pad_token_id, next_token)
        state.finished |= next_token == eos_token_id
    state.generated.index_copy_(1, state.count, next_token[:, None])
    state.token.copy_(next_token[:, None])
    state.count.add_(1)


def _chooser(do_sample: bool, temperature: float, top_k: int | None):
    """(b, vocab) logits -> (b,) tokens, with no host synchronization (so a CUDA graph can hold it). The argmax of
    bf16 or fp16 logits is that of their fp32 values; sampling computes in fp32."""
    if not do_sample:
        return lambda logits: logits.argmax(-1)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (b, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits), with no multinomial sync.
        noise = -torch.log(-torch.log(torch.rand_like(logits).clamp_(min=1e-20)))
        return (logits + noise).argmax(-1)

    return sample


_COMPILED: dict[int, torch.nn.Module] = {}
_DECODERS: dict[int, _Decoder] = {}

# Inductor options for the compiled step (benchmarks/step_profile.py --parts graph measures them). Combo kernels fuse
# independent pointwise kernels (a layer's key and value cache writes): 218 -> 202 launches, on an H200 0.799 ->
# 0.774 ms per token at 2,048 keys. Pointwise only: with reductions the 65,536-key position cumsum ran unsplit.
COMPILE_OPTIONS: dict = {"combo_kernels": True, "combo_kernels_pointwise_only": True}
# Batch-1 linear layers as inductor reductions (_row_matmul); False keeps cuBLAS's GEMVs (step_profile compares).
# Inductor's FX-graph and AOT caches do not key on the decomposition table: to compare the two settings in one
# process or cache folder, turn those caches off (step_profile.py does).
ROW_MATMULS_AS_REDUCTIONS = True
# A compiled step's greedy argmax compiled too (_Decoder), as inductor's reduction; False keeps ATen's argmax kernel
# (benchmarks/step_profile.py --parts graph compares them).
COMPILE_CHOICE = True
_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


def _row_matmul(fallback):
    """A decomposition of aten.mm / aten.addmm that writes a single-row product (a batch-1 decode step's linear
    layers) as a multiply and a sum, and leaves every other call to `fallback`, inductor's own decomposition.

    Why: as a cuBLAS call, each linear layer is a GEMV launch plus separate launches for what follows it (relu,
    residual add, fc2's split-K reduce), and cuBLASLt runs the 1,024 x 1,024 output projection on 16 blocks. As a
    reduction, inductor emits one kernel per layer with the bias, relu and residual add fused into it. (Inductor
    decomposes batch-1 `mm` this way itself, but only with coordinate_descent_tuning and never `addmm`.) The sum
    runs in fp32, like cuBLAS's accumulator, and is rounded once.
    """

    def decomposed(*args, beta=1, alpha=1):
        bias, (row, matrix) = (args[0], args[1:]) if len(args) == 3 else (None, args)
        if row.shape[0] != 1 or row.dtype != matrix.dtype:
            return fallback(*args, beta=beta, alpha=alpha) if bias is not None else fallback(*args)
        product = row.float().unsqueeze(2) * matrix.float().unsqueeze(0)  # [1, K, 1] * [1, K, N] -> [1, K, N]
        out = product.sum(dim=1)  # [1, N]
        if bias is not None:
            out = alpha * out + beta * bias.float()
        return out.to(row.dtype)

    return decomposed


_BACKENDS: dict[tuple, Any] = {}


def _inductor(options: dict, row_matmuls: bool):
    """torch.compile's inductor backend with `options`, and with _row_matmul when `row_matmuls`: one object per
    setting. Dynamo reuses a compiled frame only for the backend object that compiled it: a new closure per wrapper
    recompiled the step after every generate() call whose cache was freed (2.7 s a call for 32 x 2,048 tokens on
    an H200; tests/test_decoding.py::test_a_freed_cache_keeps_the_compiled_step)."""
    key = (tuple(sorted(options.items())), row_matmuls)
    if key not in _BACKENDS:
        from torch._inductor.compile_fx import compile_fx
        from torch._inductor.decomposition import select_decomp_table

        def backend(graph: torch.fx.GraphModule, example_inputs: list):
            table = select_decomp_table()
            if row_matmuls:
                keep = lambda *args, **kwargs: NotImplemented  # noqa: E731 - no decomposition of inductor's: keep the op
                table = {**table, **{op: _row_matmul(table.get(op, keep)) for op in _MATMULS}}
            return compile_fx(graph, example_inputs, config_patches=dict(options), decompositions=table)

        _BACKENDS[key] = backend
    return _BACKENDS[key]


def _compiled(model: AlibiForCausalLM) -> torch.nn.Module:
    """One compiled wrapper per model, so later calls reuse its kernels (shapes are static per cache size)."""
    if id(model) not in _COMPILED:
        _COMPILED.clear()  # keep no stale model alive
        # Static shapes: each cache size gets its own kernels. Automatic dynamic shapes would recompile the second
        # cache size in a process with symbolic lengths, for every later call.
        backend = _inductor(COMPILE_OPTIONS, ROW_MATMULS_AS_REDUCTIONS)
        _COMPILED[id(model)] = torch.compile(model, dynamic=False, backend=backend)
    return _COMPILED[id(model)]


def _captured(fn, warm_ups: int = 2) -> tuple[torch.cuda.CUDAGraph, Any, Any]:
    """Run `fn` `warm_ups` times on a side stream (real calls), then capture it: (the graph, the last warm-up's
    result, the captured call's, which each replay overwrites). Capturing records kernels without running them,
    so the decoding state advances only on the warm-up calls and on replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warm_ups):
            result = fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn()
    return graph, result, captured


def greedy_generate_call(model: AlibiForCausalLM, inputs: Any, generation_config: GenerationConfig | None,
                         kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """`graph_generate`'s arguments for a `generate()` call it computes exactly as transformers' loop, else None.

    That is greedy search (no beams, sampling, processors, stopping criteria, streamer or scores) of a model in eval
    mode on a `GRAPH_GENERATE_DEVICES` device, with no cache given. `generate`'s rules for the lengths, the token
    ids and a mask inferred from padding are applied here the same way.
    """
    input_ids = kwargs.get("input_ids") if inputs is None else inputs
    if (torch.compiler.is_compiling() or model.training or not isinstance(input_ids, torch.Tensor)
            or input_ids.dim() != 2 or input_ids.dtype != torch.long or input_ids.shape[1] == 0
            or input_ids.device.type not in GRAPH_GENERATE_DEVICES or input_ids.device != model.device):
        return None
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    if config.update(**{k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}):
        return None  # a keyword that is not a generation setting (streamer, logits_processor, a cache, ...)
    settings = config.to_dict()
    if any(value is not None and name not in _FREE_FIELDS and _NEUTRAL.get(name, object()) != value
           for name, value in settings.items() if not name.startswith("_")):
        return None
    eos = settings["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) and len(eos) == 1 else eos
    new = settings["max_new_tokens"] or (settings["max_length"] or 20) - input_ids.shape[1]
    if not (eos is None or isinstance(eos, int)) or new < 1:
        return None  # several end tokens; or no room, which generate() reports
    pad = settings["pad_token_id"]
    return dict(input_ids=input_ids, max_new_tokens=new, eos_token_id=eos,
                pad_token_id=pad if pad is not None else (eos if eos is not None else 0),
                attention_mask=_generate_mask(input_ids, kwargs.get("attention_mask"), pad, eos),
                prefill_chunk_size=settings.get("prefill_chunk_size") or 2048,
                max_cache_len=_cache_slots(input_ids.shape[1] + new))


def _generate_mask(input_ids: torch.Tensor, mask: torch.Tensor | None, pad: int | None,
                   eos: int | None) -> torch.Tensor | None:
    """generate()'s rule: without a mask, the pad token marks padding when it appears and is not the end token.
    A mask of ones is no mask (pipelines pass one): the prompt then takes the unpadded prefill path."""
    if mask is not None:
        return None if bool(mask.all()) else mask
    if pad is None or pad == eos or not bool((input_ids == pad).any()):
        return None
    return input_ids.ne(pad).long()


def _cache_slots(tokens: int) -> int:
    """Cache slots rounded up to an eighth of a power of two (256 at least): calls with nearby lengths share one
    compiled step (each new size compiles once), and at most 1/8 of the slots go unused."""
    step = max(256, 1 << max(tokens.bit_length() - 4, 0))
    return -(-tokens // step) * step


def graph_generate_for(model: AlibiForCausalLM, call: dict[str, Any]) -> torch.LongTensor:
    """Run a call `greedy_generate_call` accepted; a large cache is freed afterwards rather than kept."""
    sequences = graph_generate(model, **call)
    decoder = _DECODERS.get(id(model))
    if decoder is not None:
        layers = getattr(decoder.cache, "layers", [])
        size = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values)
                   if isinstance(t, torch.Tensor))
        if size > KEEP_CACHE_BYTES:
            release_decoders()
    return sequences
