#!/usr/bin/env python3
"""The PyTorch side of benches/gpu.rs: the same work on the same card, one JSON line per
measurement under the same (bench, shape) keys, "impl": "torch". scripts/gpu-check.sh runs
both and joins them into one table.

    python3 scripts/gpu_bench_torch.py [FILTER ...]   # only the groups whose name holds a FILTER

Plain PyTorch (no transformers, no torch.compile: eager, as TRL runs by default):
  - attention: F.scaled_dot_product_attention, (B, H, T, D) bf16, causal, the FlashAttention
    backend forced with torch.nn.attention.sdpa_kernel. GQA: enable_gqa=True where the flash
    backend takes it, else K and V expanded with repeat_interleave OUTSIDE the timed region
    (the kernel then runs at H KV heads, the same FLOPs); each line says which ("gqa").
  - log-probs as TRL computes them: the full (M, V) logits, log_softmax in f32, gather.
  - AdamW: torch.optim.AdamW(fused=True) over 1.2e9 f32 parameters (12 tensors of 1e8).
  - DPO loss: TRL's sigmoid formula, forward and backward, on 4096 pairs.
  - sampling: temperature, then top-p by sort + cumsum + mask, then torch.multinomial.
  - a whole DPO step of the same ~1.24B Llama (RMSNorm, rope, SDPA, SwiGLU, tied
    embeddings): f32 master weights under torch.autocast(bfloat16), fused AdamW, gradient
    clipping at 1.0, the same micro-batches.
Timing as benches/gpu.rs: CUDA events around each repetition, median after warm-ups; whole
steps with torch.cuda.synchronize() and a host clock. Inputs are uniform random (never zeros)
with the standard deviations the Rust side uses.
"""

import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

EVENTS = "CUDA events around each repetition, median"
WALL = "torch.cuda.synchronize() + host clock around each step, median"
ATTN_FORMULA = (
    "fwd = 4·B·T²·H·D/2 (FlashAttention's causal count); fwd+bwd = 3.5 × fwd (bwd = 2.5 × fwd)"
)
DEV = "cuda"


def emit(line):
    print(json.dumps(line), flush=True)


def bf16_dense_peak_tflops(name):
    """Dense bf16 tensor-core peak of the datasheets, as benches/gpu.rs."""
    n = name.upper()
    if "H200" in n:
        return 989.4
    if "H100" in n:
        if "PCIE" in n:
            return 756.0
        if "NVL" in n:
            return 835.0
        return 989.4
    if "A100" in n:
        return 312.0
    return None


def uniform(shape, std, dtype=torch.float32, offset=0.0):
    """Uniform in [-a, a) + offset with standard deviation std (a = std·√3)."""
    a = std * math.sqrt(3.0)
    x = torch.empty(shape, device=DEV, dtype=torch.float32).uniform_(-a, a)
    if offset:
        x += offset
    return x.to(dtype)


def time_events(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def measure(bench, shape, warmup_reps, fn, extra):
    line = {"bench": bench, "shape": shape, "impl": "torch"}
    try:
        ms = time_events(fn, *warmup_reps)
        line["ms"] = ms
        line.update(extra(ms))
        line["reps"] = warmup_reps[1]
        line["timing"] = EVENTS
    except Exception as e:  # an OOM or unsupported case is a line, not the end of the run
        line["error"] = f"{type(e).__name__}: {e}"
    emit(line)


def memcpy():
    n = 512 << 20  # f32: 2 GiB
    src = uniform(n, 1.0)
    dst = torch.empty_like(src)
    nbytes = 2 * 4 * n
    measure("memcpy_d2d", "2 GiB", (3, 10), lambda: dst.copy_(src),
            lambda ms: {"gbps": nbytes / ms / 1e6, "bytes": "2 × size (read + write)"})


def attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h, d = 16, 128
    for b, t in ((8, 2048), (4, 4096)):
        for hkv in (16, 4):
            shape = f"B={b} T={t} H={h} Hkv={hkv} D={d} causal bf16"
            q = uniform((b, h, t, d), 1.0, torch.bfloat16).requires_grad_()
            k = uniform((b, hkv, t, d), 1.0, torch.bfloat16).requires_grad_()
            v = uniform((b, hkv, t, d), 1.0, torch.bfloat16).requires_grad_()
            dout = uniform((b, h, t, d), 1.0, torch.bfloat16)
            fwd_flops = 4.0 * b * t * t * h * d / 2
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                gqa = "none (H = Hkv)"
                kk, vv, kw = k, v, {}
                if hkv != h:
                    try:
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        kw = {"enable_gqa": True}
                        gqa = "enable_gqa=True"
                    except (RuntimeError, TypeError):
                        rep = h // hkv
                        kk = k.detach().repeat_interleave(rep, dim=1).requires_grad_()
                        vv = v.detach().repeat_interleave(rep, dim=1).requires_grad_()
                        gqa = "repeat_interleave outside the timed region"

                def fwd():
                    with torch.no_grad():
                        F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kw)

                def fwd_bwd():
                    out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kw)
                    torch.autograd.grad(out, (q, kk, vv), dout)

                measure("attn_fwd", shape, (3, 10), fwd,
                        lambda ms: {"tflops": fwd_flops / ms / 1e9, "flops": ATTN_FORMULA, "gqa": gqa})
                measure("attn_fwd_bwd", shape, (2, 8), fwd_bwd,
                        lambda ms: {"tflops": 3.5 * fwd_flops / ms / 1e9, "flops": ATTN_FORMULA,
                                    "gqa": gqa})
            del q, k, v, kk, vv, dout
            torch.cuda.empty_cache()


def logprobs():
    m, c, v = 16384, 2048, 128256
    shape = f"M={m} C={c} V={v} bf16"
    hidden = uniform((m, c), 1.0, torch.bfloat16).requires_grad_()
    weight = uniform((v, c), 0.02, torch.bfloat16).requires_grad_()
    targets = torch.randint(0, v, (m, 1), device=DEV)
    dlogp = uniform(m, 1e-3)
    gemm = 2.0 * m * c * v
    note = "full (M, V) logits in bf16, log_softmax in f32, gather (as TRL)"

    def logp_of(h, w):
        logits = h @ w.t()
        return logits.float().log_softmax(-1).gather(-1, targets).squeeze(-1)

    def fwd():
        with torch.no_grad():
            logp_of(hidden, weight)

    def fwd_bwd():
        torch.autograd.grad(logp_of(hidden, weight), (hidden, weight), dlogp)

    measure("logprobs_fwd", shape, (2, 10), fwd,
            lambda ms: {"tflops": gemm / ms / 1e9, "flops": "2·M·C·V (the logits GEMM)", "note": note})
    measure("logprobs_fwd_bwd", shape, (2, 8), fwd_bwd,
            lambda ms: {"tflops": 3 * gemm / ms / 1e9, "flops": "6·M·C·V (logits, d(hidden), d(W))",
                        "note": note})
    del hidden, weight
    torch.cuda.empty_cache()


def logprob_rows():
    m, v = 16384, 128256
    shape = f"M={m} V={v} f32 logits"
    logits = uniform((m, v), 3.0)
    targets = torch.randint(0, v, (m, 1), device=DEV)
    upstream = uniform((m, 1), 1e-3)
    fwd_bytes = m * v * 4 + m * 12
    bwd_bytes = m * v * (4 + 2) + m * 12

    def rows():
        with torch.no_grad():
            logits.log_softmax(-1).gather(-1, targets)

    measure("logprob_rows", shape, (3, 10), rows,
            lambda ms: {"gbps": fwd_bytes / ms / 1e6,
                        "bytes": "M·V·4 + M·12 (the same count as tpo-engine's; log_softmax also "
                                 "writes its (M, V) f32 output)"})
    leaf = logits.requires_grad_()
    logp = leaf.log_softmax(-1).gather(-1, targets)

    def grad_rows():
        torch.autograd.grad(logp, leaf, upstream, retain_graph=True)[0].to(torch.bfloat16)

    measure("logprob_grad_rows", shape, (3, 10), grad_rows,
            lambda ms: {"gbps": bwd_bytes / ms / 1e6,
                        "bytes": "M·V·(4 + 2) + M·12 (tpo-engine's count), for autograd's backward "
                                 "of log_softmax + gather, cast to bf16 for the GEMMs"})
    del logits, leaf, logp
    torch.cuda.empty_cache()


def adamw():
    pieces, each = 12, 100_000_000
    p = pieces * each
    params = [torch.nn.Parameter(uniform(each, 0.02)) for _ in range(pieces)]
    for x in params:
        x.grad = uniform(each, 1e-3)
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=True)
    nbytes = 28 * p
    measure("adamw", "P=1.2e9 f32", (3, 10), opt.step,
            lambda ms: {"gbps": nbytes / ms / 1e6,
                        "bytes": "28·P: params, grads, m, v read (16); params, m, v written (12); "
                                 "no bf16 copy (autocast casts in the forward)"})
    del opt, params
    torch.cuda.empty_cache()


def dpo_loss():
    pairs, beta, smoothing = 4096, 0.1, 0.0
    policy = uniform(2 * pairs, 30.0, offset=-300.0).requires_grad_()
    reference = uniform(2 * pairs, 30.0, offset=-300.0)

    def step():
        chosen, rejected = policy[0::2], policy[1::2]
        ref_chosen, ref_rejected = reference[0::2], reference[1::2]
        logits = (chosen - rejected) - (ref_chosen - ref_rejected)
        losses = (-F.logsigmoid(beta * logits) * (1 - smoothing)
                  - F.logsigmoid(-beta * logits) * smoothing)
        chosen_rewards = beta * (chosen - ref_chosen).detach()
        rejected_rewards = beta * (rejected - ref_rejected).detach()
        (chosen_rewards > rejected_rewards).float().mean()
        torch.autograd.grad(losses.mean(), policy)

    measure("dpo_loss", f"pairs={pairs} sigmoid", (20, 200), step,
            lambda ms: {"us": ms * 1e3, "work": "TRL's sigmoid loss, its backward and the rewards"})


def sample():
    b, v, temperature, top_p = 64, 128256, 0.8, 0.95
    logits = uniform((b, v), 3.0)

    def step():
        sorted_logits, idx = torch.sort(logits / temperature, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = (probs.cumsum(-1) - probs) > top_p
        choice = torch.multinomial(probs.masked_fill(drop, 0.0), 1)
        return idx.gather(-1, choice)

    measure("sample", f"B={b} V={v} T=0.8 top_p=0.95", (10, 100), step,
            lambda ms: {"us": ms * 1e3, "logits": "uniform, std 3"})


# --- a minimal Llama, as transformers' LlamaForCausalLM computes it ---------------------------

def rms_norm(x, weight, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def param(*shape, std=0.02):
    return torch.nn.Parameter(uniform(shape, std))


class Block(torch.nn.Module):
    def __init__(self, c, h, hkv, inter, eps, gqa_kw):
        super().__init__()
        self.h, self.hkv, self.d, self.eps, self.gqa_kw = h, hkv, c // h, eps, gqa_kw
        self.input_layernorm = torch.nn.Parameter(torch.ones(c, device=DEV))
        self.q_proj = param(h * self.d, c)
        self.k_proj = param(hkv * self.d, c)
        self.v_proj = param(hkv * self.d, c)
        self.o_proj = param(c, h * self.d)
        self.post_attention_layernorm = torch.nn.Parameter(torch.ones(c, device=DEV))
        self.gate_proj = param(inter, c)
        self.up_proj = param(inter, c)
        self.down_proj = param(c, inter)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        hn = rms_norm(x, self.input_layernorm, self.eps)
        q = F.linear(hn, self.q_proj).view(b, t, self.h, self.d).transpose(1, 2)
        k = F.linear(hn, self.k_proj).view(b, t, self.hkv, self.d).transpose(1, 2)
        v = F.linear(hn, self.v_proj).view(b, t, self.hkv, self.d).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.gqa_kw is None:
            rep = self.h // self.hkv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, **self.gqa_kw)
        x = x + F.linear(att.transpose(1, 2).reshape(b, t, -1), self.o_proj)
        hn = rms_norm(x, self.post_attention_layernorm, self.eps)
        return x + F.linear(F.silu(F.linear(hn, self.gate_proj)) * F.linear(hn, self.up_proj),
                            self.down_proj)


class Llama(torch.nn.Module):
    def __init__(self, c, layers, h, hkv, inter, vocab, eps, theta, gqa_kw):
        super().__init__()
        self.eps = eps
        self.embed_tokens = param(vocab, c)  # tied: also the LM head
        self.layers = torch.nn.ModuleList(
            Block(c, h, hkv, inter, eps, gqa_kw) for _ in range(layers))
        self.norm = torch.nn.Parameter(torch.ones(c, device=DEV))
        d = c // h
        self.inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=DEV).float() / d)

    def logits(self, tokens):
        t = tokens.shape[1]
        freqs = torch.outer(torch.arange(t, device=DEV).float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = F.embedding(tokens, self.embed_tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.linear(rms_norm(x, self.norm, self.eps), self.embed_tokens)


def gqa_kwargs(h, hkv):
    """enable_gqa=True where SDPA's default backends take it here, else None (repeat)."""
    q = torch.zeros(1, h, 64, 64, device=DEV, dtype=torch.bfloat16)
    k = torch.zeros(1, hkv, 64, 64, device=DEV, dtype=torch.bfloat16)
    try:
        F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
        return {"enable_gqa": True}
    except (RuntimeError, TypeError):
        return None


def train_step(peak):
    pairs, seq, prompt, micro = 16, 512, 128, 8192
    c, layers, h, hkv, inter, vocab = 2048, 16, 32, 8, 8192, 128256
    beta = 0.1
    gqa_kw = gqa_kwargs(h, hkv)
    model = Llama(c, layers, h, hkv, inter, vocab, 1e-5, 500000.0, gqa_kw)
    params = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=True)
    # Rows 0..pairs-1 chosen, pairs..2·pairs-1 rejected, each sharing its pair's prompt.
    prompts = torch.randint(0, vocab, (pairs, prompt), device=DEV)
    chosen = torch.cat((prompts, torch.randint(0, vocab, (pairs, seq - prompt), device=DEV)), 1)
    rejected = torch.cat((prompts, torch.randint(0, vocab, (pairs, seq - prompt), device=DEV)), 1)
    ref_chosen = torch.full((pairs,), -4500.0, device=DEV)
    ref_rejected = torch.full((pairs,), -4520.0, device=DEV)
    per_micro = micro // (2 * seq)  # pairs per micro-batch
    # The log-prob of token t + 1 at position t, over the completion only.
    mask = torch.zeros(seq - 1, device=DEV)
    mask[prompt - 1:] = 1.0

    def seq_logps(tokens):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model.logits(tokens)[:, :-1]
        logp = logits.float().log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return (logp * mask).sum(-1)

    def step():
        for p0 in range(0, pairs, per_micro):
            sl = slice(p0, p0 + per_micro)
            logps = seq_logps(torch.cat((chosen[sl], rejected[sl])))
            pc, pr = logps[:per_micro], logps[per_micro:]
            logits = (pc - pr) - (ref_chosen[sl] - ref_rejected[sl])
            loss = -F.logsigmoid(beta * logits).sum() / pairs
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    shape = (f"Llama {n_params / 1e9:.2f}B (C={c} L={layers} H={h} Hkv={hkv} D={c // h} "
             f"I={inter} V={vocab} tied), {pairs} pairs x 2 x {seq} tokens, micro-batch {micro}")
    line = {"bench": "train_step", "shape": shape, "impl": "torch"}
    try:
        step()  # warm-up
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(times)
        tokens = 2 * pairs * seq
        tps = tokens / (ms / 1e3)
        tflops = tps * (6.0 * n_params + 6.0 * layers * h * (c // h) * seq) / 1e12
        line.update({
            "ms": ms,
            "tokens_per_s": tps,
            "tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "params": n_params,
            "flops": "per token 6·P + 6·L·T·H·D (P all parameters, tied: the LM head is the "
                     "embedding; causal attention fwd+bwd at T = 512); MFU = that × tokens/s / "
                     "the bf16 dense peak",
            "precision": "f32 master weights under torch.autocast(bfloat16), f32 grads and AdamW "
                         "state; full logits, log_softmax in f32",
            "gqa": "enable_gqa=True" if gqa_kw else "repeat_interleave",
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reps": 4,
            "timing": WALL,
        })
    except Exception as e:
        line["error"] = f"{type(e).__name__}: {e}"
    emit(line)


def main():
    filters = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not torch.cuda.is_available():
        emit({"bench": "gpu_bench_torch", "skipped": "torch sees no CUDA device"})
        return
    name = torch.cuda.get_device_name(0)
    peak = bf16_dense_peak_tflops(name)
    emit({"bench": "device", "impl": "torch", "name": name, "torch": torch.__version__,
          "bf16_dense_peak_tflops": peak,
          "timing": f"{EVENTS} of the timed repetitions after untimed warm-ups "
                    f"(whole train steps: {WALL})"})
    groups = [
        ("memcpy", memcpy),
        ("attention", attention),
        ("logprobs", logprobs),
        ("rows", logprob_rows),
        ("adamw", adamw),
        ("dpo_loss", dpo_loss),
        ("sample", sample),
        ("train_step", lambda: train_step(peak)),
    ]
    for group, fn in groups:
        if filters and not any(f in group for f in filters):
            continue
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:
            emit({"bench": group, "shape": "*", "impl": "torch",
                  "error": f"{type(e).__name__}: {e}"})
        torch.cuda.empty_cache()
        print(f"gpu_bench_torch: {group} took {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    main()
