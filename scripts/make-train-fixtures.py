"""Writes the DPO training fixtures under tests/fixtures/dpo/: losses, metrics, gradients and
three AdamW steps as PyTorch autograd computes them on the tiny llama and qwen2 checkpoints of
tests/fixtures/ (loaded in float32 with eager attention; those directories are only read).
Run by developers (scripts/python-env.sh first), never by CI:

    .venv/bin/python scripts/make-train-fixtures.py

Files:
  cases.json                  pairs, cases and the AdamW run (below)
  <case>.grads.safetensors    one f32 tensor per parameter, named as transformers names them
                              (model.layers.0.self_attn.q_proj.weight, ...): d loss / d param at
                              the checkpoint's weights. A tied embedding has no lm_head entry; its
                              model.embed_tokens.weight gradient includes the head's share.
  adamw.params.safetensors    every parameter after the three AdamW updates, same names

cases.json:
  "pairs": [{"prompt": [ids], "chosen": [ids], "rejected": [ids]}]   three pairs, ids in 1..255.
      A sequence is prompt ++ completion. The policy log-prob of a completion is the sum over its
      positions t of log_softmax(logits[t - 1])[ids[t]], each sequence on its own (no padding).
  "ref_offsets": {"chosen": [..], "rejected": [..]}   drawn from N(0, std 2), shared by the models
  "cases": [{"name", "model": "llama" | "qwen2", "loss_type": "sigmoid" | "ipo" | "hinge", "beta",
      "label_smoothing", "nll_alpha",
      "ref_chosen": [..], "ref_rejected": [..]   reference log-probs, one per pair: that model's
                                                 own log-prob at its checkpoint + the offset,
                                                 rounded to f32
      "policy_chosen": [..], "policy_rejected": [..]   the policy's log-prob sums at the checkpoint
      "grad_policy_chosen": [..], "grad_policy_rejected": [..]   d loss / d those sums
      "loss", "metrics": {name: value}, "grads": file name}]
  "adamw": {"model", "case" (whose loss it minimises), "lr", "betas", "eps", "weight_decay",
      "max_grad_norm", "no_decay": [names], "ref_chosen", "ref_rejected",
      "losses": [4]  the loss before each update (losses[0] at the checkpoint, losses[3] after
                     the third update), "grad_norms": [3]  the norm before clipping, per update,
      "params": file name}

Loss of pair i, with pi the policy sums, rho the reference sums, n the completion lengths and
z = beta * ((pi_c - rho_c) - (pi_r - rho_r)):
  sigmoid  -(1 - label_smoothing) * logsigmoid(z) - label_smoothing * logsigmoid(-z)
  hinge    relu(1 - z)
  ipo      (h - 1 / (2 beta))^2 with h = (pi_c - rho_c) - (pi_r - rho_r) computed from per-token
           means: every pi and rho divided by its n first
loss = mean_i loss_i + nll_alpha * nll, nll = -(sum_i pi_c,i) / (sum_i n_c,i) from the raw sums.
Metrics use TRL's names: rewards/chosen = mean beta (pi_c - rho_c), rewards/rejected likewise,
rewards/accuracies = mean [chosen reward > rejected reward], rewards/margins = mean of the reward
difference, logps/chosen = mean pi_c, logps/rejected = mean pi_r (for ipo all of these from the
per-token means), nll_loss when nll_alpha > 0, grad_norm = L2 norm of all gradients together (a
tied embedding counted once). The AdamW run clips with clip_grad_norm_(max_grad_norm) before each
update and decays only parameters with two or more dimensions (Hugging Face Trainer's rule: no
decay for norm weights and biases); the learning rate is constant.

Every computed number is an f32 value written with Python's repr, so it reads back exactly (the
offsets alone are float64). Before writing, the script checks itself: the log-probs and the
loss again from one right-padded batch with an attention mask, the loss formulas again in
float64 plain Python, and the gradients against a float64 copy of the model and a central
finite difference. What rounding alone accounts for (the float64 runs show it): gradients move
by up to about 1e-5 of their tensor's largest entry, the AdamW losses by about 1e-5 (relative)
and its parameters by up to about 3e-4 (all but 0.01% of them by under 1e-5). The llama
checkpoint's logits are wide, so its log-prob sums are large (about -24 per token) and carry
absolute errors of about 1e-5.
"""

import contextlib
import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "dpo"
VOCAB = 256
# With this seed the hinge case (beta 0.5) has pairs on both sides of z = 1 (one with zero
# gradient, two without), and the rewards of one pair favour the rejected completion.
SEED = 0
PROMPT_LENS = [5, 9, 3]
COMPLETION_LENS = [(6, 4), (3, 8), (7, 7)]

CASES = [
    dict(name="llama_sigmoid", model="llama", loss_type="sigmoid", beta=0.1, label_smoothing=0.0, nll_alpha=0.0),
    dict(name="llama_sigmoid_smooth_nll", model="llama", loss_type="sigmoid", beta=0.5, label_smoothing=0.2,
         nll_alpha=1.0),
    dict(name="llama_ipo", model="llama", loss_type="ipo", beta=0.2, label_smoothing=0.0, nll_alpha=0.0),
    dict(name="llama_hinge", model="llama", loss_type="hinge", beta=0.5, label_smoothing=0.0, nll_alpha=0.0),
    dict(name="qwen2_sigmoid", model="qwen2", loss_type="sigmoid", beta=0.3, label_smoothing=0.0, nll_alpha=0.0),
]
ADAMW = dict(case="llama_sigmoid_smooth_nll", lr=1e-2, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.1,
             max_grad_norm=1.0, steps=3)


def make_pairs():
    g = torch.Generator().manual_seed(SEED)
    pairs = []
    for p, (c, r) in zip(PROMPT_LENS, COMPLETION_LENS):
        pair = {k: torch.randint(1, VOCAB, (n,), generator=g).tolist()
                for k, n in (("prompt", p), ("chosen", c), ("rejected", r))}
        assert pair["chosen"] != pair["rejected"]
        pairs.append(pair)
    offsets = 2.0 * torch.randn(2, len(pairs), generator=g, dtype=torch.float64)
    return pairs, {"chosen": offsets[0].tolist(), "rejected": offsets[1].tolist()}


def load(name, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / name, dtype=dtype, attn_implementation="eager")
    return model.eval()  # no dropout either way; eval keeps it explicit


def completion_logp(logits, ids, prompt_len):
    """Sum of the completion tokens' log-probs; logits (T, V) for ids (T,)."""
    logp = torch.log_softmax(logits[prompt_len - 1 : -1], dim=-1)
    return logp.gather(-1, ids[prompt_len:, None]).sum()


def policy_logps(model, pairs):
    """(chosen, rejected) sums, one forward per sequence."""
    out = {"chosen": [], "rejected": []}
    for pair in pairs:
        for side in out:
            ids = torch.tensor(pair["prompt"] + pair[side])
            logits = model(input_ids=ids[None]).logits[0]
            out[side].append(completion_logp(logits, ids, len(pair["prompt"])))
    return torch.stack(out["chosen"]), torch.stack(out["rejected"])


def policy_logps_batched(model, pairs):
    """The same sums from one right-padded batch of all six sequences with an attention mask."""
    seqs = [(pair["prompt"], pair[side]) for side in ("chosen", "rejected") for pair in pairs]
    t = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    labels = torch.zeros(len(seqs), t, dtype=torch.bool)  # positions whose token is scored
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, : len(p) + len(c)] = 1
        labels[i, len(p) : len(p) + len(c)] = True
    logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    sums = torch.where(labels[:, 1:], logp, 0.0).sum(-1)
    return sums[: len(pairs)], sums[len(pairs) :]


def dpo_loss(case, pi_c, pi_r, rho_c, rho_r, n_c, n_r):
    """Loss and metrics (tensors) of one case; the pi are tensors with grad, the rest are fixed."""
    beta, eps, alpha = case["beta"], case["label_smoothing"], case["nll_alpha"]
    raw_pi_c = pi_c
    if case["loss_type"] == "ipo":
        pi_c, pi_r, rho_c, rho_r = pi_c / n_c, pi_r / n_r, rho_c / n_c, rho_r / n_r
    h = (pi_c - rho_c) - (pi_r - rho_r)
    if case["loss_type"] == "sigmoid":
        z = beta * h
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    elif case["loss_type"] == "hinge":
        losses = torch.relu(1 - beta * h)
    elif case["loss_type"] == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(case["loss_type"])
    loss = losses.mean()
    chosen, rejected = beta * (pi_c - rho_c), beta * (pi_r - rho_r)
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "logps/chosen": pi_c.mean(),
        "logps/rejected": pi_r.mean(),
    }
    if alpha > 0:
        nll = -raw_pi_c.sum() / n_c.sum()
        loss = loss + alpha * nll
        metrics["nll_loss"] = nll
    return loss, {k: v.detach() for k, v in metrics.items()}


def dpo_loss_f64(case, pi_c, pi_r, rho_c, rho_r, n_c, n_r):
    """The loss again, in float64 plain Python from lists, to check dpo_loss."""
    beta, eps, alpha = case["beta"], case["label_smoothing"], case["nll_alpha"]
    logsig = lambda x: -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))
    total = 0.0
    for i in range(len(pi_c)):
        a, b, ra, rb = pi_c[i], pi_r[i], rho_c[i], rho_r[i]
        if case["loss_type"] == "ipo":
            a, b, ra, rb = a / n_c[i], b / n_r[i], ra / n_c[i], rb / n_r[i]
        h = (a - ra) - (b - rb)
        z = beta * h
        if case["loss_type"] == "sigmoid":
            total += -(1 - eps) * logsig(z) - eps * logsig(-z)
        elif case["loss_type"] == "hinge":
            total += max(0.0, 1 - z)
        else:
            total += (h - 1 / (2 * beta)) ** 2
    return total / len(pi_c) + alpha * (-sum(pi_c) / sum(n_c))


def case_loss(model, pairs, case, refs, batched=False):
    pi_c, pi_r = (policy_logps_batched if batched else policy_logps)(model, pairs)
    dtype = pi_c.dtype
    n_c = torch.tensor([len(p["chosen"]) for p in pairs], dtype=dtype)
    n_r = torch.tensor([len(p["rejected"]) for p in pairs], dtype=dtype)
    rho_c = torch.tensor(refs["chosen"], dtype=dtype)
    rho_r = torch.tensor(refs["rejected"], dtype=dtype)
    loss, metrics = dpo_loss(case, pi_c, pi_r, rho_c, rho_r, n_c, n_r)
    return loss, metrics, (pi_c, pi_r), (n_c, n_r)


def grads_of(model):
    """Gradient per parameter name; named_parameters lists a tied weight once."""
    return {name: p.grad.detach().clone().contiguous() for name, p in model.named_parameters()}


def global_norm(grads):
    return torch.nn.utils.get_total_norm(list(grads.values()), 2.0)


@contextlib.contextmanager
def float64_throughout():
    """transformers runs RMSNorm and the attention softmax in f32 whatever the model's dtype;
    for the float64 check both follow the input's dtype instead (else f32 rounding swamps the
    finite difference)."""
    softmax = F.softmax

    def softmax64(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=torch.float64 if x.dtype == torch.float64 else dtype)

    def rms_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    norms = [modeling_llama.LlamaRMSNorm, modeling_qwen2.Qwen2RMSNorm]
    saved = [cls.forward for cls in norms]
    F.softmax = softmax64
    for cls in norms:
        cls.forward = rms_norm
    try:
        yield
    finally:
        F.softmax = softmax
        for cls, forward in zip(norms, saved):
            cls.forward = forward


def check_gradients(name, pairs, case, refs, loss32, grads32):
    """float64 copy: its loss and gradients must match the f32 ones, and a central finite
    difference along a random direction must match its gradient (so no path is detached)."""
    model = load(name, torch.float64)
    with torch.no_grad():
        mixed = case_loss(model, pairs, case, refs)[0].item()
    with float64_throughout():
        loss64, _, _, _ = case_loss(model, pairs, case, refs)
        assert loss64.item() != mixed, "the float64 patch did not take"
        loss64.backward()
        g64 = grads_of(model)
        g = torch.Generator().manual_seed(11)
        params = dict(model.named_parameters())
        direction = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
        length = math.sqrt(sum((d * d).sum().item() for d in direction.values()))
        direction = {k: d / length for k, d in direction.items()}  # a unit step in all parameters
        analytic = sum((g64[k] * direction[k]).sum().item() for k in params)
        h = 1e-4
        values = []
        for sign in (1, -1):
            shifted = copy.deepcopy(model)
            with torch.no_grad():
                for k, p in shifted.named_parameters():
                    p.add_(sign * h * direction[k])
                values.append(case_loss(shifted, pairs, case, refs)[0].item())
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, global_norm(g64).item()), (numeric, analytic)
    assert abs(loss64.item() - loss32) <= 1e-5 * max(1.0, abs(loss32)), (loss64.item(), loss32)
    worst = 0.0
    for k in g64:
        scale = g64[k].abs().max().item()
        err = (grads32[k].double() - g64[k]).abs().max().item()
        worst = max(worst, err / max(scale, 1e-12))
        assert err <= 1e-4 * max(scale, 1e-3), (k, err, scale)
    return worst, numeric, analytic


def run_case(case, pairs, offsets, init_logps):
    model = load(case["model"])
    pi0_c, pi0_r = init_logps[case["model"]]
    # Rounded to f32, so that reading them as f32 or as f64 gives the same loss.
    refs = {side: torch.tensor(init, dtype=torch.float64).add(torch.tensor(offsets[side])).float().tolist()
            for side, init in (("chosen", pi0_c), ("rejected", pi0_r))}
    loss, metrics, (pi_c, pi_r), (n_c, n_r) = case_loss(model, pairs, case, refs)
    pi_c.retain_grad()
    pi_r.retain_grad()
    loss.backward()
    grads = grads_of(model)
    metrics["grad_norm"] = global_norm(grads)

    # Second way: one padded batch. Same log-probs, same loss, same gradients.
    batched = load(case["model"])
    loss_b, _, (bc, br), _ = case_loss(batched, pairs, case, refs, batched=True)
    assert torch.allclose(torch.cat([bc, br]), torch.cat([pi_c, pi_r]), rtol=1e-5, atol=1e-5), (bc, br, pi_c, pi_r)
    assert abs(loss_b.item() - loss.item()) <= 1e-5 * max(1.0, abs(loss.item())), (loss_b.item(), loss.item())
    loss_b.backward()
    for k, v in grads_of(batched).items():
        scale = grads[k].abs().max().item()
        assert (v - grads[k]).abs().max().item() <= 1e-5 * max(scale, 1e-3), (k, (v - grads[k]).abs().max(), scale)
    # Third way for the formula: float64 plain Python on the same log-probs.
    ref64 = dpo_loss_f64(case, pi_c.tolist(), pi_r.tolist(), refs["chosen"], refs["rejected"],
                         n_c.tolist(), n_r.tolist())
    assert abs(ref64 - loss.item()) <= 1e-5 * max(1.0, abs(loss.item())), (ref64, loss.item())
    worst, numeric, analytic = check_gradients(case["model"], pairs, case, refs, loss.item(), grads)

    if case["loss_type"] == "hinge":
        z = [case["beta"] * ((a - ra) - (b - rb))
             for a, b, ra, rb in zip(pi_c.tolist(), pi_r.tolist(), refs["chosen"], refs["rejected"])]
        assert any(v < 1 for v in z), z  # else relu(1 - z) is flat and every gradient is zero
        assert any(v > 1 for v in z), z  # and one pair on the flat side
        assert metrics["grad_norm"] > 0
        print(f"  hinge z per pair: {[round(v, 3) for v in z]}")
    print(f"{case['name']}: loss {loss.item():.6f}, grad_norm {metrics['grad_norm'].item():.6f}; "
          f"batched loss differs by {abs(loss_b.item() - loss.item()):.1e}, f64 formula by "
          f"{abs(ref64 - loss.item()):.1e}; f32 grads vs f64 worst rel {worst:.1e}; "
          f"finite difference {numeric:.8f} vs autograd {analytic:.8f}")

    grads_file = f"{case['name']}.grads.safetensors"
    save_file(grads, str(OUT / grads_file))
    return {
        **case,
        "ref_chosen": refs["chosen"],
        "ref_rejected": refs["rejected"],
        "policy_chosen": pi_c.tolist(),
        "policy_rejected": pi_r.tolist(),
        "grad_policy_chosen": pi_c.grad.tolist(),
        "grad_policy_rejected": pi_r.grad.tolist(),
        "loss": loss.item(),
        "metrics": {k: v.item() for k, v in metrics.items()},
        "grads": grads_file,
    }, refs


def adamw_steps(case, pairs, refs, dtype=torch.float32):
    """Losses before each update, pre-clip gradient norms, the parameters at the end."""
    model = load(case["model"], dtype)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"])
    losses, norms = [], []
    for step in range(ADAMW["steps"] + 1):
        loss = case_loss(model, pairs, case, refs)[0]
        losses.append(loss.item())
        if step == ADAMW["steps"]:
            break
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), ADAMW["max_grad_norm"]).item())
        opt.step()
        opt.zero_grad()
    return losses, norms, {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}


def run_adamw(case, pairs, refs):
    losses, norms, params = adamw_steps(case, pairs, refs)
    print(f"adamw: losses {[round(v, 6) for v in losses]}, grad norms {[round(v, 6) for v in norms]}")
    assert losses[-1] < losses[0]
    # How far honest rounding differences carry after three steps: the same run in float64.
    with float64_throughout():
        losses64, norms64, params64 = adamw_steps(case, pairs, refs, torch.float64)
    loss_diff = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(losses, losses64))
    norm_diff = max(abs(a - b) / b for a, b in zip(norms, norms64))
    param_diff = max((params[k].double() - params64[k]).abs().max().item() for k in params)
    print(f"  float64 run: losses differ by {loss_diff:.1e} (relative), grad norms by {norm_diff:.1e} "
          f"(relative), parameters by {param_diff:.1e} at most")
    assert loss_diff < 1e-4 and norm_diff < 1e-4 and param_diff < 0.1 * ADAMW["lr"]
    save_file(params, str(OUT / "adamw.params.safetensors"))
    no_decay = [n for n, p in params.items() if p.dim() < 2]
    return {"model": case["model"], "case": case["name"], "lr": ADAMW["lr"], "betas": ADAMW["betas"],
            "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"], "max_grad_norm": ADAMW["max_grad_norm"],
            "no_decay": no_decay, "ref_chosen": refs["chosen"], "ref_rejected": refs["rejected"],
            "losses": losses, "grad_norms": norms, "params": "adamw.params.safetensors"}


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    pairs, offsets = make_pairs()
    init_logps = {}
    for name in ("llama", "qwen2"):
        with torch.no_grad():
            c, r = policy_logps(load(name), pairs)
        init_logps[name] = (c.tolist(), r.tolist())
    cases, refs_of = [], {}
    for case in CASES:
        out, refs = run_case(case, pairs, offsets, init_logps)
        cases.append(out)
        refs_of[case["name"]] = refs
    adamw_case = next(c for c in CASES if c["name"] == ADAMW["case"])
    adamw = run_adamw(adamw_case, pairs, refs_of[adamw_case["name"]])
    doc = {"pairs": pairs, "ref_offsets": offsets, "cases": cases, "adamw": adamw}
    (OUT / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT}: {len(list(OUT.iterdir()))} files, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
