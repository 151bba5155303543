"""The feed-forward block (`AlibiMLP`), whose first projection and ReLU run as one GEMM in compiled training:
cuBLASLt's RELU_BIAS epilogue.

`relu(fc1(x))` is a GEMM with a bias epilogue followed by a pointwise ReLU that rereads and rewrites the
(tokens, intermediate) activation: 16 kernels and 0.63 ms of a 25 ms training step for the WikiText-103-size
model at 16 x 512 tokens on an H200. `torch._addmm_activation` applies the bias and the ReLU inside the GEMM.
Since ReLU commutes with rounding, the output is the same as the separate ops' for the same GEMM algorithm.

Inductor splits `_addmm_activation` back into a GEMM and a pointwise kernel, and the op has no autograd formula,
so it runs here as a `torch.library` custom op. Its backward masks the gradient and sums it for the bias in one
pass on CUDA (alibi_triton_norm.py), where inductor writes the masked gradient and then reads it again.
`AlibiMLP` uses it only inside `torch.compile`: eagerly, a custom op's dispatch costs more host time than the
kernel it saves (see alibi_cudnn.py's `_EagerCudnnAlibi`).

Hub payload: imports only torch and its siblings alibi_ops.py, (inside `try`) alibi_triton_norm.py and (for type
hints only) configuration_alibi.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .alibi_ops import autocast_inputs, compiled_training, custom_op

if TYPE_CHECKING:
    from .configuration_alibi import AlibiConfig

try:  # ReLU's backward and the bias gradient in one pass on CUDA (alibi_triton_norm.py); plain ops without triton
    from .alibi_triton_norm import relu_backward_with_bias, relu_supported
except ImportError:
    relu_backward_with_bias = relu_supported = None

# Devices where the backward runs that kernel (for the dtypes `relu_supported` takes); () gives plain ops everywhere,
# which inductor fuses into two kernels.
RELU_KERNEL_DEVICES = ("cuda",)


def _linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(x @ weight.T + bias); x (..., d_in), weight (d_out, d_in), bias (d_out,), one dtype."""
    flat = x.reshape(-1, x.shape[-1])  # (tokens, d_in)
    return torch._addmm_activation(bias, flat, weight.t()).view(*x.shape[:-1], weight.shape[0])  # (..., d_out)


def _linear_relu_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


linear_relu = custom_op("linear_relu", __name__, _linear_relu, _linear_relu_fake)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output)  # the output is the ReLU's mask: what eager autograd saves too


def _grad(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, weight, output = ctx.saved_tensors
    flat, flat_output = grad.reshape(-1, grad.shape[-1]), output.reshape(-1, output.shape[-1])  # (tokens, d_out)
    if flat.device.type in RELU_KERNEL_DEVICES and relu_supported is not None and relu_supported(flat):
        flat, grad_bias = relu_backward_with_bias(flat.contiguous(), flat_output.contiguous())
    else:
        flat = torch.where(flat_output > 0, flat, 0)  # ReLU's backward, as threshold_backward
        grad_bias = flat.sum(0)
    return (flat @ weight).view(*grad.shape[:-1], -1), flat.t() @ x.reshape(-1, x.shape[-1]), grad_bias


linear_relu.register_autograd(_grad, setup_context=_setup_context)


def fused_linear_relu(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """relu(linear(x)) through `linear_relu`, with the dtypes autocast would give `F.linear` (custom ops pass
    through autocast uncast)."""
    return linear_relu(*autocast_inputs(x, linear.weight, linear.bias))


# Where compiled training runs fc1 and ReLU as one GEMM: measured on CUDA.
FUSED_RELU_DEVICES = ("cuda",)

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class AlibiMLP(nn.Module):
    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.activation = _ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.activation_dropout)
        self.fuse_relu = config.activation_function == "relu" and config.use_bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # fc1's bias and ReLU in the GEMM's epilogue (the same values, one kernel fewer); not in decoding's graphs
        if self.fuse_relu and compiled_training(hidden_states, FUSED_RELU_DEVICES):
            return self.fc2(self.dropout(fused_linear_relu(hidden_states, self.fc1)))
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))
