"""The training step's memory-bound rows in Triton: the residual add with the LayerNorm after it (forward and
backward), and ReLU's backward with fc1's bias gradient. Both write the column sums of their gradients (the
LayerNorm's weight and bias, fc1's bias) as partial sums from the pass that reads the rows anyway.

Why hand-written kernels: for `total = residual + delta; normed = layer_norm(total)` inductor writes a good forward,
but its backward reads the rows for the input gradient and then either reads them again for the weight and bias
gradients or (its "mix-order reduction", the default) writes (512, hidden) partial sums that ATen's `sum` finishes
in 66 launches: 1.7 ms of a 25 ms training step for the WikiText-103-size model at 16 x 512 tokens on an H200
(docs/benchmarks.md, fifteenth session). ReLU's backward writes the masked gradient, and fc1's bias gradient then
reads it again. Here each backward is one pass over its rows that also writes one (programs, columns) block of
fp32 partial sums, and one small kernel adds those up.

Shapes: rows are (rows, columns) contiguous; LayerNorm rows are at most MAX_NORM_COLUMNS wide, one block each.

Hub payload: imports only torch, triton (inside `try`) and its siblings alibi_ops.py and alibi_triton_forward.py.
"""

from __future__ import annotations

import torch

# In a `try` block for transformers' remote-code import check; see alibi_triton_forward.py.
try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("alibi_triton_norm needs triton, which CUDA builds of PyTorch install") from error

from .alibi_ops import triton_op
from .alibi_triton_forward import _device_guard, wrap_triton

__all__ = [
    "add_layer_norm_backward", "add_layer_norm_forward", "norm_supported", "relu_backward_with_bias", "relu_supported"
]

MAX_NORM_COLUMNS = 8192
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Programs of the LayerNorm backward: each owns a contiguous run of rows and writes one row of partial sums. Enough
# to fill an H200 (132 SMs) about twice; more would make the partial sums (programs x columns x 4 bytes) larger.
PARTIAL_PROGRAMS = 264
NORM_ROWS = 2  # rows a program holds at once, (NORM_ROWS, columns)
# Warps of the LayerNorm backward (fewer where rows are narrow: at least 4 values a thread). It holds two blocks of
# rows, the one it reduces and the next one's loads: at 2 x 1,024, 16 warps take 64 registers a thread (ptxas), so
# an SM runs two programs. With PARTIAL_PROGRAMS and NORM_ROWS, the fastest of twelve settings on an H200
# (benchmarks/norm_bench.py, eighteenth session).
NORM_BACKWARD_WARPS = 16
RELU_ROWS, RELU_COLUMNS = 16, 512  # the ReLU backward's block
RELU_PROGRAMS = 512  # about this many ReLU backward programs in all, row runs times column blocks


def norm_supported(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the LayerNorm kernels take (rows, columns) `rows` with this weight: one GPU, one dtype, contiguous."""
    return (
        rows.is_cuda
        and rows.dim() == 2
        and rows.dtype in SUPPORTED_DTYPES
        and weight.dtype == rows.dtype
        and weight.device == rows.device
        and rows.shape[1] <= MAX_NORM_COLUMNS
        and rows.is_contiguous()
    )


def relu_supported(grad: torch.Tensor) -> bool:
    """Whether `relu_backward_with_bias` takes this (rows, columns) gradient: it sums in fp32, so not float64. The
    caller picks the device."""
    return grad.dim() == 2 and grad.dtype in SUPPORTED_DTYPES


@triton.jit
def _add_norm_forward_kernel(residual_ptr, delta_ptr, weight_ptr, bias_ptr, total_ptr, normed_ptr, mean_ptr,
                             rstd_ptr, n_rows, n_cols, eps, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    inside = (rows < n_rows) & (cols < n_cols)
    offsets = rows.to(tl.int64) * n_cols + cols
    residual = tl.load(residual_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    delta = tl.load(delta_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    total = (residual + delta).to(total_ptr.dtype.element_ty)  # rounded as the eager add rounds it
    tl.store(total_ptr + offsets, total, mask=inside)
    x = total.to(tl.float32)
    mean = tl.sum(x, axis=1) / n_cols  # (ROWS,)
    centered = tl.where(inside, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / n_cols + eps)
    weight = tl.load(weight_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    normed = centered * rstd[:, None] * weight + bias
    tl.store(normed_ptr + offsets, normed.to(normed_ptr.dtype.element_ty), mask=inside)
    tl.store(mean_ptr + rows, mean[:, None], mask=rows < n_rows)
    tl.store(rstd_ptr + rows, rstd[:, None], mask=rows < n_rows)


@triton.jit
def _load_norm_rows(grad_normed_ptr, grad_total_ptr, total_ptr, mean_ptr, rstd_ptr, rows, cols, end, n_cols):
    """The backward's inputs for (ROWS, 1) `rows` below `end`: x, dy and the residual's gradient (ROWS, BLOCK) in
    their dtype, mean and rstd (ROWS, 1) fp32; zeros outside."""
    inside = (rows < end) & (cols < n_cols)
    offsets = rows.to(tl.int64) * n_cols + cols
    x = tl.load(total_ptr + offsets, mask=inside, other=0.0)
    dy = tl.load(grad_normed_ptr + offsets, mask=inside, other=0.0)
    grad_total = tl.load(grad_total_ptr + offsets, mask=inside, other=0.0)
    mean = tl.load(mean_ptr + rows, mask=rows < end, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=rows < end, other=0.0)
    return x, dy, grad_total, mean, rstd


@triton.jit
def _add_norm_backward_kernel(grad_normed_ptr, grad_total_ptr, total_ptr, weight_ptr, mean_ptr, rstd_ptr,
                              grad_ptr, partial_ptr, n_rows, n_cols, rows_per_program,
                              BLOCK: tl.constexpr, ROWS: tl.constexpr):
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    weight = tl.load(weight_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    grad_weight = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    grad_bias = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    first = program * rows_per_program
    end = tl.minimum(first + rows_per_program, n_rows)
    rows = first + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    # Each iteration loads the next ROWS rows before it reduces the current ones (by hand: Triton's pipeliner
    # does not stage these loads), so that two blocks of loads are in flight: one block at a time, the kernel
    # read at half the copy rate (docs/benchmarks.md, seventeenth and eighteenth sessions).
    x, dy, grad_total, mean, rstd = _load_norm_rows(grad_normed_ptr, grad_total_ptr, total_ptr, mean_ptr, rstd_ptr,
                                                    rows, cols, end, n_cols)
    for _ in range(first, first + rows_per_program, ROWS):
        after = _load_norm_rows(grad_normed_ptr, grad_total_ptr, total_ptr, mean_ptr, rstd_ptr, rows + ROWS, cols,
                                end, n_cols)
        inside = (rows < end) & (cols < n_cols)
        dy_f = dy.to(tl.float32)
        x_hat = tl.where(inside, (x.to(tl.float32) - mean) * rstd, 0.0)
        dy_w = dy_f * weight
        # d x = rstd * (dy_w - mean(dy_w) - x_hat * mean(dy_w * x_hat)), LayerNorm's input gradient
        dx = (dy_w - tl.sum(dy_w, axis=1)[:, None] / n_cols
              - x_hat * (tl.sum(dy_w * x_hat, axis=1)[:, None] / n_cols)) * rstd
        dx += grad_total.to(tl.float32)  # the residual stream's own
        tl.store(grad_ptr + rows.to(tl.int64) * n_cols + cols, dx.to(grad_ptr.dtype.element_ty), mask=inside)
        grad_weight += dy_f * x_hat
        grad_bias += dy_f
        x, dy, grad_total, mean, rstd = after
        rows += ROWS
    # This program's partial sums: row `program` of a (programs, 2, columns) block.
    partial = partial_ptr + program.to(tl.int64) * 2 * n_cols + tl.arange(0, BLOCK)
    tl.store(partial, tl.sum(grad_weight, axis=0), mask=tl.arange(0, BLOCK) < n_cols)
    tl.store(partial + n_cols, tl.sum(grad_bias, axis=0), mask=tl.arange(0, BLOCK) < n_cols)


@triton.jit
def _relu_backward_kernel(grad_ptr, output_ptr, grad_in_ptr, partial_ptr, n_rows, n_cols, rows_per_program,
                          BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    program = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)[None, :]  # (1, BLOCK_COLS)
    grad_bias = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=tl.float32)
    first = program * rows_per_program
    for start in range(first, first + rows_per_program, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)[:, None]  # (BLOCK_ROWS, 1)
        inside = (rows < n_rows) & (cols < n_cols)
        offsets = rows.to(tl.int64) * n_cols + cols
        grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0)
        output = tl.load(output_ptr + offsets, mask=inside, other=0.0)
        grad = tl.where(output > 0, grad, 0.0).to(grad_in_ptr.dtype.element_ty)  # threshold_backward
        tl.store(grad_in_ptr + offsets, grad, mask=inside)
        grad_bias += grad.to(tl.float32)
    tl.store(partial_ptr + program.to(tl.int64) * n_cols + cols, tl.sum(grad_bias, axis=0)[None, :],
             mask=cols < n_cols)


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, n_partials, n_cols, BLOCK_ROWS: tl.constexpr,
                         BLOCK_COLS: tl.constexpr):
    """out[c] = sum over p of partial[p, c], in out's dtype; partial (n_partials, n_cols) fp32."""
    cols = tl.program_id(0) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)[None, :]  # (1, BLOCK_COLS)
    total = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)[:, None]
        total += tl.load(partial_ptr + rows * n_cols + cols, mask=(rows < n_partials) & (cols < n_cols), other=0.0)
    tl.store(out_ptr + cols, tl.sum(total, axis=0)[None, :].to(out_ptr.dtype.element_ty), mask=cols < n_cols)


def _programs(n_rows: int, rows_at_once: int, programs: int) -> tuple[int, int]:
    """(programs, rows per program) that split `n_rows` among about `programs`, in multiples of `rows_at_once`."""
    per_program = triton.cdiv(triton.cdiv(max(n_rows, 1), programs), rows_at_once) * rows_at_once
    return triton.cdiv(max(n_rows, 1), per_program), per_program


def _sum_partials(partial: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n_partials, n) fp32 -> (n,) in `dtype`. Narrow column blocks, so that there are many programs, each
    reading all its rows at once (up to 256 of them): in 64-row steps the 256 partials took 4 µs a call."""
    n_partials, n = partial.shape
    out = torch.empty(n, device=partial.device, dtype=dtype)
    block_rows = min(256, triton.next_power_of_2(max(n_partials, 1)))
    wrap_triton(_sum_partials_kernel)[(triton.cdiv(n, 16),)](
        partial, out, n_partials, n, BLOCK_ROWS=block_rows, BLOCK_COLS=16)
    return out


def _add_norm_forward(
    residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n_rows, n_cols = residual.shape
    total, normed = torch.empty_like(residual), torch.empty_like(residual)
    mean = torch.empty(n_rows, device=residual.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block = triton.next_power_of_2(n_cols)
    if n_rows:
        with _device_guard(residual):
            wrap_triton(_add_norm_forward_kernel)[(triton.cdiv(n_rows, NORM_ROWS),)](
                residual, delta, weight, bias, total, normed, mean, rstd, n_rows, n_cols, eps,
                BLOCK=block, ROWS=NORM_ROWS, num_warps=_norm_warps(block))
    return total, normed, mean, rstd


def _add_norm_backward(
    grad_normed: torch.Tensor,
    grad_total: torch.Tensor,
    total: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of the rows, (2, columns): the weight's gradient, then the bias's)."""
    n_rows, n_cols = total.shape
    grad = torch.empty_like(total)
    programs, per_program = _programs(n_rows, NORM_ROWS, PARTIAL_PROGRAMS)
    partial = torch.empty(programs, 2 * n_cols, device=total.device, dtype=torch.float32)  # (programs, 2 * cols)
    block = triton.next_power_of_2(n_cols)
    with _device_guard(total):
        wrap_triton(_add_norm_backward_kernel)[(programs,)](
            grad_normed, grad_total, total, weight, mean, rstd, grad, partial, n_rows, n_cols, per_program,
            BLOCK=block, ROWS=NORM_ROWS, num_warps=min(NORM_BACKWARD_WARPS, _norm_warps(block, 4)))
        sums = _sum_partials(partial, weight.dtype).view(2, n_cols)  # the weight's gradient, then the bias's
    return grad, sums


def _norm_warps(block: int, values_per_thread: int = 16) -> int:
    """Warps for a (NORM_ROWS, block) tile: about `values_per_thread` values a thread, 4 to 16 warps."""
    return min(16, max(4, NORM_ROWS * block // (32 * values_per_thread)))


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n_rows, n_cols = grad.shape
    grad_in = torch.empty_like(grad)
    column_blocks = triton.cdiv(n_cols, RELU_COLUMNS)
    # Fewer row runs where the columns already give several blocks.
    programs, per_program = _programs(n_rows, RELU_ROWS, max(1, RELU_PROGRAMS // column_blocks))
    partial = torch.empty(programs, n_cols, device=grad.device, dtype=torch.float32)
    with _device_guard(grad):
        wrap_triton(_relu_backward_kernel)[(programs, column_blocks)](
            grad, output, grad_in, partial, n_rows, n_cols, per_program,
            BLOCK_ROWS=RELU_ROWS, BLOCK_COLS=RELU_COLUMNS, num_warps=8)
        grad_bias = _sum_partials(partial, grad.dtype)
    return grad_in, grad_bias


# Ops torch.compile sees through (alibi_ops.triton_op): compiled training launches these kernels from inductor's code.
add_layer_norm_forward = triton_op("add_layer_norm_forward", __name__, _add_norm_forward)
add_layer_norm_backward = triton_op("add_layer_norm_backward", __name__, _add_norm_backward)
relu_backward_with_bias = triton_op("relu_backward_with_bias", __name__, _relu_backward)
