"""Slopes follow the paper's recursive rule; the bias is relative, exact in fp32 and padding-invariant."""

import pytest
import torch
from torch.testing import assert_close

from modeling_alibi import alibi_bias, alibi_slopes
from tests.fairseq_reference import get_slopes


@pytest.mark.parametrize("num_heads", range(1, 65))
def test_slopes_equal_the_papers_recursive_formula(num_heads):
    expected = torch.tensor(get_slopes(num_heads), dtype=torch.float32)  # the fork's code
    assert_close(alibi_slopes(num_heads), expected, rtol=1e-6, atol=0)


def test_non_power_of_two_order_is_interleaved_not_sorted():
    # shared/spec/fairseq.md section 2: 6 heads -> [1/4, 1/16, 1/64, 1/256, 1/2, 1/8]
    assert alibi_slopes(6).tolist() == [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]


def test_bias_max_generalizes_the_rule():
    assert_close(alibi_slopes(4, bias_max=16.0), torch.tensor([2.0**-4, 2.0**-8, 2.0**-12, 2.0**-16]))


def test_bias_is_relative_and_exact_far_from_the_origin():
    slopes = alibi_slopes(8)
    base = 1_000_000  # far past any training length
    query = torch.arange(base, base + 4)[None]
    key = torch.arange(base - 3, base + 4)[None]
    bias = alibi_bias(slopes, query, key)  # (1, 8, 4, 7)
    expected = -slopes[None, :, None, None].double() * (query[:, :, None] - key[:, None, :]).double()[:, None]
    assert torch.equal(bias.double(), expected)  # integer distances times powers of two: no rounding at all
    near_origin = alibi_bias(slopes, query - base + 3, key - base + 3)
    assert torch.equal(bias, near_origin)


def test_bias_survives_bf16_near_the_diagonal_at_long_range():
    """The relative form keeps the entries that matter exact in bf16; BLOOM's absolute form does not."""
    slopes = alibi_slopes(8)
    position = torch.tensor([[65_536]])
    keys = position - torch.arange(0, 8)[None]
    relative = alibi_bias(slopes, position, keys).to(torch.bfloat16).float()
    exact = alibi_bias(slopes, position, keys)
    assert torch.equal(relative, exact)
    absolute = (slopes[:, None] * keys.float()).to(torch.bfloat16).float()  # BLOOM: slope * key position
    absolute = absolute - absolute[:, :1]  # what softmax sees after its shift invariance
    assert not torch.equal(absolute, exact[0, :, 0])
