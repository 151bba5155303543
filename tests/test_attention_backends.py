"""Every backend computes what eager computes: with 4 and 6 heads, with and without padding."""

import pytest
import torch
from torch.testing import assert_close

import modeling_alibi.modeling_alibi as modeling
from modeling_alibi import AlibiForCausalLM

from conftest import model_pair, tiny_config, tiny_model

HEADS = [pytest.param(4, id="h4"), pytest.param(6, id="h6")]


def batch_with_padding(padded: bool, length: int = 23, batch: int = 3):
    input_ids = torch.randint(3, 99, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded:
        mask[1, :5] = 0  # left padding
        mask[2, -7:] = 0  # right padding
        input_ids[mask == 0] = 1
    return input_ids, mask


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_sdpa_matches_eager(num_heads, padded):
    input_ids, mask = batch_with_padding(padded)
    eager = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    sdpa = tiny_model(num_heads, "sdpa")(input_ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(sdpa[real], eager[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads", HEADS)
def test_sdpa_query_chunks_match_eager(num_heads, monkeypatch):
    """Long inputs run SDPA in query chunks; force tiny chunks and compare."""
    input_ids, mask = batch_with_padding(True)
    eager = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    monkeypatch.setattr(modeling, "SDPA_BIAS_BYTES", 4 * 3 * num_heads * 23 * 5)  # 5 query rows per chunk
    sdpa = tiny_model(num_heads, "sdpa")(input_ids, attention_mask=mask).logits
    assert_close(sdpa[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=1e-5)


# --- flash-attn is not installable on CPU machines: check our call against its documented semantics -----------


def _reference_flash(q, k, v, dropout_p, softmax_scale, causal, alibi_slopes):
    """flash_attn_func semantics: (b, s, h, d); causal and ALiBi bottom-right aligned, -slope * |i + sk - sq - j|."""
    assert causal and dropout_p == 0.0 and alibi_slopes.dtype == torch.float32
    sq, sk = q.shape[1], k.shape[1]
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    bias = -alibi_slopes[:, None, None] * (i - j).abs()  # (h, sq, sk)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * softmax_scale + bias
    scores = scores.masked_fill(j > i, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def _reference_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, alibi_slopes):
    outs = []
    for n in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[n], cu_q[n + 1]), slice(cu_k[n], cu_k[n + 1])
        outs.append(_reference_flash(q[None, qs], k[None, ks], v[None, ks], dropout_p, softmax_scale, causal, alibi_slopes)[0])
    return torch.cat(outs)


@pytest.fixture
def fake_flash(monkeypatch):
    monkeypatch.setattr(modeling, "flash_attn_func", _reference_flash)
    monkeypatch.setattr(modeling, "flash_attn_varlen_func", _reference_flash_varlen)


def flash_model(num_heads: int) -> AlibiForCausalLM:
    model = tiny_model(num_heads, "eager")
    model.config._attn_implementation = "flash_attention_2"  # transformers' own check wants the real package
    return model


def test_flash_without_flash_attn_names_the_extra():
    if modeling.flash_attn_func is not None:
        pytest.skip("flash-attn is installed")
    with pytest.raises(ImportError, match=r"alibi-lm\[flash\]"):
        tiny_model(4, "flash_attention_2")


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_flash_call_matches_eager(fake_flash, num_heads, padded):
    input_ids, mask = batch_with_padding(padded)
    eager = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    flash = flash_model(num_heads)(input_ids, attention_mask=mask).logits
    assert_close(flash[mask.bool()], eager[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads", HEADS)
def test_flash_call_decodes_with_cache(fake_flash, num_heads):
    input_ids, mask = batch_with_padding(False, length=12)
    mask[0, :3] = 0
    model = flash_model(num_heads)
    full = tiny_model(num_heads, "eager")(input_ids, attention_mask=mask).logits
    out = model(input_ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
    steps = [out.logits]
    for t in range(8, 12):
        out = model(input_ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=out.past_key_values)
        steps.append(out.logits)
    assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)


def test_output_attentions_falls_back_to_eager_weights():
    input_ids, mask = batch_with_padding(True)
    out = tiny_model(4, "sdpa")(input_ids, attention_mask=mask, output_attentions=True)
    weights = out.attentions[0]  # (b, h, q, k)
    assert weights.shape == (3, 4, 23, 23)
    allowed = torch.ones(23, 23).tril().bool()[None] & mask.bool()[:, None, :]  # (b, q, k): causal, not padding
    for b in range(3):
        real = mask[b].bool()  # padded query rows are don't-care
        rows = weights[b][:, real]  # (h, real q, k)
        assert_close(rows.sum(-1), torch.ones(rows.shape[:2]))
        assert torch.all(rows[~allowed[b][real][None].expand_as(rows)] == 0)


def test_default_backend_is_sdpa_on_cpu_and_flex_on_cuda():
    model = AlibiForCausalLM(tiny_config())
    expected = "flex_attention" if torch.cuda.is_available() else "sdpa"
    assert model.config._attn_implementation == expected


# --- FlexAttention's block mask, built from block distance ranges ---------------------------------------------


@pytest.mark.skipif(modeling.BlockMask is None, reason="this torch has no FlexAttention")
@pytest.mark.parametrize("truncation", [None, 20.0], ids=["full", "truncated"])
@pytest.mark.parametrize("window", [None, 200], ids=["unwindowed", "window200"])
@pytest.mark.parametrize("q_len,k_len", [(1, 300), (100, 300), (256, 520), (300, 300), (1000, 1000), (130, 1000)])
def test_unpadded_block_mask_equals_create_block_mask(q_len, k_len, window, truncation):
    """Same partial and full blocks, in the same order, as flex's dense construction, with no (q, k) tensor."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = k_len - q_len
    max_distance = None if truncation is None else truncation / modeling.alibi_slopes(4)
    mask = modeling.AlibiAttentionMask(
        query_positions=torch.arange(offset, k_len)[None], key_positions=torch.arange(k_len)[None],
        key_padding=None, slopes=None, window=window, max_distance=max_distance,
    )
    mask_mod = modeling._flex_mask_mod(mask, offset)
    heads = None if max_distance is None else 4
    expected = create_block_mask(mask_mod, 1, heads, q_len, k_len, device="cpu")
    actual = modeling._unpadded_block_mask(mask_mod, q_len, k_len, offset, window, max_distance, torch.device("cpu"))
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks"):
        want, got = getattr(expected, name), getattr(actual, name)
        if name.endswith("indices"):  # only the first `count` entries of a row are meaningful
            counts = getattr(expected, name.replace("indices", "num_blocks"))
            keep = torch.arange(want.shape[-1]) < counts[..., None]
            want, got = want.expand_as(got)[keep.expand_as(got)], got[keep.expand_as(got)]
        assert torch.equal(want.expand_as(got), got), name
    assert torch.equal(expected.to_dense().expand_as(actual.to_dense()), actual.to_dense())


# --- GPU: FlexAttention and SDPA at 8,192 tokens in bf16 -----------------------------------------------------


def test_model_pair_really_runs_two_backends():
    """Guards the GPU comparisons below: the reference must stay eager when the fast model is built."""
    reference, fast = model_pair(4, "sdpa", device="cpu")
    assert reference.config is not fast.config
    assert (reference.config._attn_implementation, fast.config._attn_implementation) == ("eager", "sdpa")


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["flex_attention", "sdpa"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_gpu_fp32_matches_eager(num_heads, implementation):
    reference, fast = model_pair(num_heads, implementation)
    input_ids, mask = batch_with_padding(True, length=300)
    input_ids, mask = input_ids.cuda(), mask.cuda()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=mask).logits
        actual = fast(input_ids, attention_mask=mask).logits
    assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", ["flex_attention", "sdpa"])
@pytest.mark.parametrize("num_heads", HEADS)
def test_gpu_bf16_matches_eager_at_8192(num_heads, implementation):
    reference, fast = model_pair(num_heads, implementation, dtype=torch.bfloat16)
    input_ids = torch.randint(3, 99, (1, 8192), device="cuda")
    with torch.no_grad():
        expected = reference(input_ids).logits.float().log_softmax(-1)
        actual = fast(input_ids).logits.float().log_softmax(-1)
    # bf16 tolerance: both sides round activations to 8 significant bits, layer by layer.
    assert_close(actual, expected, atol=5e-2, rtol=5e-2)
    assert (actual - expected).abs().mean() < 5e-3
