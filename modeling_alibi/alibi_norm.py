"""The residual add and the LayerNorm after it as one autograd node (`add_layer_norm`), whose backward also
returns the LayerNorm's weight and bias gradients from its one pass over the rows.

Pre-norm blocks compute `total = residual + delta` and then `layer_norm(total)`, and the backward needs the
LayerNorm's input gradient plus the residual stream's own. On CUDA both directions are alibi_triton_norm.py's
kernels (why: see there); elsewhere, and for shapes or dtypes the kernels do not take, ATen's `native_layer_norm`
and its backward. In compiled training on CUDA, where `add_layer_norm_applies`, pre-norm models use it for each
block's LayerNorm after attention and, with each block's last add left to the next block
(`PendingAdd`), for every block's first LayerNorm but the first block's (`AlibiModel._defers_adds` decides).

The last block keeps its add, and the model's final LayerNorm stays inductor's. As a node it would put a chain of
extern kernels from the first block to the head under the loss's custom op, and inductor in torch 2.11 (our floor;
2.13 and newer format it lazily) formats that op's arguments when it first meets it, log level or not
(`GraphLowering.call_function`'s "Creating implicit fallback" line). `ExternKernel.__str__` prints each input again
for every path to it: that did not finish in a minute on an H200's host, then overflowed the C stack
(docs/benchmarks.md, twenty-first to twenty-third sessions).

Why the deferred add: the first LayerNorm as a node of its own needed the previous block's add as a separate
kernel, which cost what its one-pass backward saved (docs/benchmarks.md, seventeenth session); with the add done in
the node, 0.2-0.3 ms off a 24 ms step (nineteenth, twenty-first and twenty-third sessions).

Hub payload: imports only torch and (inside `try`) alibi_triton_norm.py.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

try:  # Triton kernels on CUDA; ATen's ops where triton is missing
    from .alibi_triton_norm import add_layer_norm_backward, add_layer_norm_forward, norm_supported
except ImportError:
    add_layer_norm_backward = add_layer_norm_forward = norm_supported = None

# Devices where the add and LayerNorm run as alibi_triton_norm's kernels; () gives ATen's ops everywhere.
NORM_KERNEL_DEVICES = ("cuda",)


def _kernels(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    return rows.device.type in NORM_KERNEL_DEVICES and norm_supported is not None and norm_supported(rows, weight)


class _AddLayerNorm(torch.autograd.Function):
    """(total, layer_norm(total)) of total = residual + delta, on (rows, hidden) rows."""

    @staticmethod
    def forward(
        ctx: Any, residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if delta.dtype == residual.dtype and _kernels(residual, weight):
            total, normed, mean, rstd = add_layer_norm_forward(residual, delta, weight, bias, eps)
        else:
            total = residual + delta
            normed, mean, rstd = torch.native_layer_norm(total, total.shape[-1:], weight, bias, eps)
        ctx.save_for_backward(total, weight, bias, mean, rstd)
        return total, normed

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, grad_normed: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        total, weight, bias, mean, rstd = ctx.saved_tensors
        grad_normed, grad_total = grad_normed.contiguous(), grad_total.contiguous()
        if _kernels(total, weight):
            grad, sums = add_layer_norm_backward(grad_normed, grad_total, total, weight, mean, rstd)
            grad_weight, grad_bias = sums  # (hidden,) each
        else:
            grad, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
                grad_normed, total, total.shape[-1:], mean, rstd, weight, bias, [True, True, True])
            grad = grad + grad_total
        return grad, grad, grad_weight, grad_bias, None


class PendingAdd(NamedTuple):
    """A pre-norm block's last residual add, `residual + delta`, not yet done: compiled training passes it to the
    next block, whose first LayerNorm does it in one node (`add_layer_norm`)."""

    residual: torch.Tensor
    delta: torch.Tensor


def add_layer_norm_applies(residual: torch.Tensor, delta: torch.Tensor, norm: nn.LayerNorm) -> bool:
    """Whether `add_layer_norm` computes what the separate ops would: inputs in the norm's dtype and no autocast
    (which would run the LayerNorm in fp32 and the add in mixed dtypes), an affine norm over the last dimension.

    Autocast's form (an fp32 residual stream, a bf16 delta) computes the same values but was slower on an H200:
    inductor fuses the add, the LayerNorm and the bf16 cast of fc1's input into one kernel, which the node splits
    (28.37 against 27.64 ms a step, docs/benchmarks.md, eighteenth session)."""
    return (
        not torch.is_autocast_enabled(residual.device.type)
        and residual.dtype == delta.dtype == getattr(norm.weight, "dtype", None)
        and norm.bias is not None
        and len(norm.normalized_shape) == 1
    )


def add_layer_norm(residual: torch.Tensor, delta: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, ...]:
    """(residual + delta, norm(residual + delta)) for (..., hidden) inputs of the norm's dtype, as one node: its
    backward adds the gradient that reaches the sum to the LayerNorm's input gradient in the same pass.

    The add rounds to the inputs' dtype before the LayerNorm reads it, as the separate ops do; the LayerNorm
    computes in fp32. Needs an affine `norm` over the last dimension.
    """
    if norm.weight is None or norm.bias is None or len(norm.normalized_shape) != 1:
        raise ValueError("add_layer_norm needs a LayerNorm with weight and bias over the last dimension")
    shape = residual.shape
    rows = (residual.reshape(-1, shape[-1]).contiguous(), delta.reshape(-1, shape[-1]).contiguous())  # (rows, hidden)
    total, normed = _AddLayerNorm.apply(*rows, norm.weight, norm.bias, norm.eps)
    return total.view(shape), normed.view(shape)
