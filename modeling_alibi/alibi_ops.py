"""Registration of the payload's `torch.library` custom ops (cuDNN's ALiBi, the decode kernel, fc1 with its ReLU,
the loss rows, the norm kernels), the test for compiled training that gates them, the autocast cast their callers
make, and the label the losses skip.

An op name can be registered once per process, and the package and a Hub copy of the same file
(transformers_modules...) may both be imported, so each op's name carries the name of the module that defines it.

Hub payload: imports only torch and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The label of a position without a target (transformers' labels, PyTorch's `ignore_index` default): every loss and
# score in the package skips it, in plain ops and in alibi_triton_loss's kernel alike.
IGNORE_INDEX = -100


def _op_name(name: str, module_name: str) -> str:
    """`alibi_lm::<name>_<module_name>`, the module name's dots and other non-alphanumerics as "_"."""
    return f"alibi_lm::{name}_{''.join(c if c.isalnum() else '_' for c in module_name)}"


def custom_op(name: str, module_name: str, function: Callable, fake: Callable) -> torch.library.CustomOpDef:
    """`function` as the op `_op_name(name, module_name)`, with `fake` as its fake-tensor implementation, opaque to
    torch.compile. It mutates none of its inputs."""
    op = torch.library.custom_op(_op_name(name, module_name), mutates_args=())(function)
    op.register_fake(fake)
    return op


def triton_op(name: str, module_name: str, function: Callable) -> torch.library.CustomOpDef:
    """`function`, which launches its Triton kernels through `torch.library.wrap_triton`, as the op
    `_op_name(name, module_name)`. It mutates none of its inputs, and is its own fake-tensor implementation.

    Unlike `custom_op`'s, torch.compile sees through it: inductor launches the kernels from its own generated code.
    A compiled call then costs no Python dispatch of the op and no Triton JIT launch, which took about 0.25 ms of
    host time per call on an H200's host, where compiled training without CUDA graphs is host-bound
    (docs/benchmarks.md, twenty-second and twenty-third sessions)."""
    return torch.library.triton_op(_op_name(name, module_name), mutates_args=())(function)


def compiled_training(hidden_states: torch.Tensor, devices: tuple[str, ...]) -> bool:
    """Training under torch.compile on one of `devices`: where the model's fused training ops run (alibi_packed.py,
    alibi_norm.py, alibi_linear_relu.py), as measured there."""
    return hidden_states.device.type in devices and torch.is_grad_enabled() and torch.compiler.is_compiling()


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` in autocast's dtype where autocast is on for their device, as `F.linear` would cast them: custom
    ops and autograd.Functions receive their inputs uncast."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)
