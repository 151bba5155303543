"""Registration of the payload's `torch.library` custom ops (cuDNN's ALiBi, the decode kernel, fc1 with its ReLU,
the loss rows), the autocast cast their callers make, and the label the losses skip.

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


def custom_op(name: str, module_name: str, function: Callable, fake: Callable) -> torch.library.CustomOpDef:
    """`function` as the op `alibi_lm::<name>_<module_name>` (its dots and other non-alphanumerics as "_"), with
    `fake` as its fake-tensor implementation. It mutates none of its inputs."""
    suffix = "".join(c if c.isalnum() else "_" for c in module_name)
    op = torch.library.custom_op(f"alibi_lm::{name}_{suffix}", mutates_args=())(function)
    op.register_fake(fake)
    return op


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` in autocast's dtype where autocast is on for their device, as `F.linear` would cast them: custom
    ops and autograd.Functions receive their inputs uncast."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)
