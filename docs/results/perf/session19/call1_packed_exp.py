"""Session 19 experiment: q, k and v as one GEMM feeding cuDNN's ALiBi directly in its packed layout.

Variants (argv[1], comma-separated): base (main's step), cat (weights stacked at each call, packed cuDNN op),
param (one stacked parameter, packed cuDNN op), param-ln1 (also the block's first LayerNorm fused with the previous
block's last residual add through alibi_norm.add_layer_norm). Writes packed_exp.json to argv[2].

Session 19, call 1 (the record of what ran, on main at 3bff5f7): `.ab/packed_exp.py
check,base,param,param-ln1,cat,base,param-ln1 $OUT/w`. Lint markers (noqa) added afterwards; no statement changed.
"""

import json
import os
import sys
import types

sys.path.insert(0, "benchmarks")
import step_profile as sp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling_alibi import alibi_cudnn as cs  # noqa: E402
from modeling_alibi import modeling_alibi as modeling  # noqa: E402, F401
from modeling_alibi.alibi_norm import add_layer_norm  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

from cuda_timing import gpu_busy, host_us  # noqa: E402

_G = {}


def _packed_strides(b, h, s, d):
    return [s * 3 * h * d, d, 3 * h * d, 1]


def _define(cudnn, handle, backward, shape, dtype, scale):
    b, h, s, d = shape
    packed = dict(dim=[b, h, s, d], stride=_packed_strides(b, h, s, d))
    layout = dict(dim=[b, h, s, d], stride=list(cs._bshd_strides(b, h, s, d)))
    stats_layout = dict(dim=[b, h, s, 1], stride=[h * s, s, 1, 1], data_type=cudnn.data_type.FLOAT)
    mask = dict(attn_scale=scale, use_causal_mask=True, use_alibi_mask=True)
    graph = cs._new_graph(cudnn, handle, dtype)
    q, k, v = (graph.tensor(name=name, uid=uid, **packed) for uid, name in ((1, "q"), (2, "k"), (3, "v")))
    if not backward:
        out, stats = graph.sdpa(name="alibi_sdpa", q=q, k=k, v=v, generate_stats=True, **mask)
        out.set_uid(100).set_output(True).set_dim(layout["dim"]).set_stride(layout["stride"])
        stats.set_uid(101).set_output(True).set_dim(stats_layout["dim"]).set_stride(stats_layout["stride"])
        stats.set_data_type(cudnn.data_type.FLOAT)
        return graph, (1, 2, 3, 100, 101)
    out = graph.tensor(name="o", uid=100, **layout)
    stats = graph.tensor(name="stats", uid=101, **stats_layout)
    grad_out = graph.tensor(name="dO", uid=200, **layout)
    dq, dk, dv = graph.sdpa_backward(name="alibi_sdpa_bwd", q=q, k=k, v=v, o=out, dO=grad_out, stats=stats, **mask)
    for uid, grad in enumerate((dq, dk, dv), start=201):
        grad.set_uid(uid).set_output(True).set_dim(packed["dim"]).set_stride(packed["stride"])
    return graph, (1, 2, 3, 100, 101, 200, 201, 202, 203)


def _run(backward, scale, shape, buffers):
    cudnn = cs._frontend()
    device = buffers[0].device
    handle = cs._handle(cudnn, device)
    key = (backward, shape, buffers[0].dtype, scale)
    if key not in _G:
        graph, uids = _define(cudnn, handle, backward, shape, buffers[0].dtype, scale)
        cs._finish(cudnn, graph)
        _G[key] = (graph, uids, graph.get_workspace_size())
    graph, uids, ws = _G[key]
    workspace = torch.empty(max(ws, 1), device=device, dtype=torch.uint8)
    graph.execute(list(buffers), workspace, handle=handle, tensor_uids=uids)


def _split(qkv, heads):
    b, s, three = qkv.shape
    d = three // 3 // heads
    x = qkv.view(b, s, 3, heads, d)  # (b, s, 3, h, d)
    return tuple(x[:, :, i].transpose(1, 2) for i in range(3)), (b, heads, s, d)  # (b, h, s, d) views


@torch.library.custom_op("abx::pk_fwd", mutates_args=())
def pk_fwd(qkv: torch.Tensor, heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    (q, k, v), shape = _split(qkv, heads)
    b, h, s, d = shape
    out = cs._empty_bshd(b, h, s, d, qkv)
    stats = torch.empty(b, h, s, 1, device=qkv.device, dtype=torch.float32)
    _run(False, scale, shape, (q, k, v, out, stats))
    return out, stats


@pk_fwd.register_fake
def _(qkv, heads, scale):
    b, s, three = qkv.shape
    d = three // 3 // heads
    return cs._empty_bshd(b, heads, s, d, qkv), qkv.new_empty(b, heads, s, 1, dtype=torch.float32)


@torch.library.custom_op("abx::pk_bwd", mutates_args=())
def pk_bwd(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor, heads: int,
           scale: float) -> torch.Tensor:
    (q, k, v), shape = _split(qkv, heads)
    grad_out, out = cs._as_bshd(grad_out), cs._as_bshd(out)
    dqkv = torch.empty_like(qkv)
    (dq, dk, dv), _ = _split(dqkv, heads)
    _run(True, scale, shape, (q, k, v, out, stats.contiguous(), grad_out, dq, dk, dv))
    return dqkv


@pk_bwd.register_fake
def _(grad_out, qkv, out, stats, heads, scale):
    return torch.empty_like(qkv)


def _setup(ctx, inputs, output):
    qkv, heads, scale = inputs
    out, stats = output
    ctx.save_for_backward(qkv, out, stats)
    ctx.mark_non_differentiable(stats)
    ctx.heads, ctx.scale = heads, scale


def _grad(ctx, grad_out, grad_stats):
    qkv, out, stats = ctx.saved_tensors
    return pk_bwd(grad_out, qkv, out, stats, ctx.heads, ctx.scale), None, None


pk_fwd.register_autograd(_grad, setup_context=_setup)


def attn_forward(self, hidden_states, attention_mask, rotary=None, cache=None, output_attentions=False):
    b, s, _ = hidden_states.shape
    if hasattr(self, "qkv_weight"):
        weight, bias = self.qkv_weight, self.qkv_bias
    else:
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])  # (3 * hidden, hidden)
        bias = torch.cat([p.bias for p in projections])
    qkv = F.linear(hidden_states, weight, bias)  # (b, s, 3 * hidden)
    out = pk_fwd(qkv, self.num_heads, float(self.scaling))[0]  # (b, h, s, d)
    return self.o_proj(out.transpose(1, 2).reshape(b, s, -1)), None


def layer_forward(self, hidden_states, attention_mask, rotary=None, cache=None, output_attentions=False):
    if isinstance(hidden_states, tuple):  # (residual, delta) of the previous block
        residual, x = add_layer_norm(*hidden_states, self.self_attn_layer_norm)
    else:
        residual, x = hidden_states, self.self_attn_layer_norm(hidden_states)
    a, w = self.self_attn(x, attention_mask, rotary, cache, output_attentions)
    residual, x = self._add_and_norm(residual, a)
    delta = self.mlp(x)
    if self.last:
        return residual + delta, w
    return (residual, delta), w


def pack(model, variant):
    for layer in model.model.layers:
        attn = layer.self_attn
        if variant != "base":
            attn.forward = types.MethodType(attn_forward, attn)
        if variant.startswith("param"):
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            attn.qkv_weight = torch.nn.Parameter(torch.cat([p.weight.detach() for p in projections]))
            attn.qkv_bias = torch.nn.Parameter(torch.cat([p.bias.detach() for p in projections]))
            del attn.q_proj, attn.k_proj, attn.v_proj
        if variant.endswith("ln1"):
            layer.forward = types.MethodType(layer_forward, layer)
            layer.last = layer is model.model.layers[-1]


def check(x):
    """Loss and a few gradients of the packed variants against base, compiled, one step."""
    result = {}
    for variant in ("base", "cat", "param", "param-ln1"):
        torch._dynamo.reset()
        model = sp.build().train()
        pack(model, variant)
        loss = torch.compile(training_loss(model))(input_ids=x, labels=x)
        loss.backward()
        layer = model.model.layers[3]
        attn = layer.self_attn
        if variant.startswith("param"):
            gq = attn.qkv_weight.grad[:1024]
        else:
            gq = attn.q_proj.weight.grad
        result[variant] = (loss.detach().float(), gq.float(), layer.self_attn_layer_norm.weight.grad.float(),
                           model.model.embed_tokens.weight.grad.float())
        del model
    base = result["base"]
    for variant, got in result.items():
        errs = [float((a - b).abs().max()) for a, b in zip(got, base)]  # noqa: B905
        scale = [float(b.abs().max()) for b in base]
        print(f"check {variant}: loss {float(got[0]):.6f} max abs diff vs base {errs} (base max {scale})", flush=True)


def row(result, x, variant):
    torch._dynamo.reset()
    model = sp.build().train()
    pack(model, variant)
    loss_fn = torch.compile(training_loss(model), options={"triton.cudagraphs": True})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        loss_fn(input_ids=x, labels=x).backward()  # noqa: F821 (deleted after timing, as it ran)
        opt.step()  # noqa: F821
        opt.zero_grad(set_to_none=True)  # noqa: F821

    import time
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(4):
        step()
    torch.cuda.synchronize()
    ms = host_us(step, 20) / 1e3
    gpu_ms, top = gpu_busy(step, 3, 45)
    r = dict(variant=variant, back_to_back_ms=round(ms, 3), gpu_ms=round(gpu_ms, 3), tok_s=round(8192 / ms * 1e3),
             first_s=round(first, 1), top=top)
    result.append(r)
    print(f"--- {variant}: {r['back_to_back_ms']} ms back to back, {r['gpu_ms']} ms GPU, {r['tok_s']} tok/s, "
          f"first {r['first_s']} s", flush=True)
    sp.print_top(top[:45])
    del model, opt, loss_fn
    torch.cuda.empty_cache()


if __name__ == "__main__":
    x = torch.randint(3, 32000, (16, 512), device="cuda")
    if "check" in sys.argv[1]:
        check(x)
    rows = []
    for variant in sys.argv[1].split(","):
        if variant != "check":
            row(rows, x, variant)
        json.dump(rows, open(os.path.join(sys.argv[2], "packed_exp.json"), "w"), indent=1)
    print("summary:", [(r["variant"], r["back_to_back_ms"], r["gpu_ms"]) for r in rows])
