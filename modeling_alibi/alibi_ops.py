"""Registration of the payload's `torch.library` custom ops: cuDNN's ALiBi, the decode kernel, fc1 with its ReLU.

An op name can be registered once per process, and the package and a Hub copy of the same file
(transformers_modules...) may both be imported, so each op's name carries the name of the module that defines it.

Hub payload: imports only torch and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def custom_op(name: str, module_name: str, function: Callable, fake: Callable) -> torch.library.CustomOpDef:
    """`function` as the op `alibi_lm::<name>_<module_name>` (its dots and other non-alphanumerics as "_"), with
    `fake` as its fake-tensor implementation. It mutates none of its inputs."""
    suffix = "".join(c if c.isalnum() else "_" for c in module_name)
    op = torch.library.custom_op(f"alibi_lm::{name}_{suffix}", mutates_args=())(function)
    op.register_fake(fake)
    return op
