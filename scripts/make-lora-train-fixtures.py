"""Writes tests/fixtures/lora-dpo/: a DPO step and three AdamW updates of a LoRA adapter as
PEFT and PyTorch autograd compute them, over the frozen tiny llama checkpoint of
tests/fixtures/ (float32, eager attention). The pairs, the loss settings and the reference
log-probs are those of the DPO fixtures' "llama_sigmoid_smooth_nll" case
(tests/fixtures/dpo/cases.json, made by scripts/make-train-fixtures.py), which are only read.
Run by developers (scripts/python-env.sh first), never by CI:

    .venv/bin/python scripts/make-lora-train-fixtures.py

Files:
  start/adapter_config.json, start/adapter_model.safetensors
                       the starting adapter, PEFT's save_pretrained: r 4, lora_alpha 8
                       (scale 2), every Linear of the blocks, A as PEFT initialises it and B
                       set to small random values (PEFT's B = 0 would give A no gradient)
  grads.safetensors    d loss / d every lora_A and lora_B at the start, under the adapter
                       file's tensor names
  adamw.safetensors    every lora_A and lora_B after three AdamW updates of the adapter alone
  case.json            {"case": the DPO case's name, "loss", "metrics" (TRL's names, with
                       grad_norm: the adapter gradients' L2 norm), "adamw": {"lr", "betas",
                       "eps", "weight_decay", "max_grad_norm", "losses": [4] the loss before
                       each update and after the last, "grad_norms": [3] before clipping}}

The base model's weights are frozen (requires_grad False, as PEFT leaves them): only the
adapters have gradients and optimizer state. Every adapter tensor is a matrix, so all decay.
Before writing, the script checks itself: the gradients against a float64 copy and a central
finite difference along a random direction of the adapter's parameters, and that no base
weight moved in the AdamW run.
"""

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "lora-dpo"
CASE = "llama_sigmoid_smooth_nll"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# float64_throughout() of the DPO fixtures' script: RMSNorm and the attention softmax in the
# input's dtype, so that a float64 model is float64 throughout.
_spec = importlib.util.spec_from_file_location("train_fixtures", ROOT / "scripts" / "make-train-fixtures.py")
train_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_fixtures)
ADAMW = dict(lr=1e-2, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.1, max_grad_norm=1.0, steps=3)


def peft_model(dtype=torch.float32):
    """The llama fixture with the starting adapter (the same values at any dtype)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "llama", dtype=torch.float32,
                                                attn_implementation="eager")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=TARGETS)
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model = model.to(dtype)
    return model.eval()


def lora_params(model):
    """name -> parameter, under the names of the adapter file."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad, name
            out[name.replace(".default", "")] = p
        else:
            assert not p.requires_grad, f"{name} is not frozen"
    return out


def loss_of(model, pairs, case):
    """The DPO fixtures' loss (sigmoid with label smoothing, plus NLL) and TRL's metrics, as
    their script computes them."""
    refs = {"chosen": case["ref_chosen"], "rejected": case["ref_rejected"]}
    loss, metrics, _, _ = train_fixtures.case_loss(model, pairs, case, refs)
    return loss, {k: v.item() for k, v in metrics.items()}


def global_norm(tensors):
    return math.sqrt(sum((t.double() ** 2).sum().item() for t in tensors))


def check_gradients(pairs, case, grads32, loss32):
    """float64 copy: its gradients match, and a central finite difference along a random
    unit direction of the adapter's parameters matches its directional derivative."""
    with train_fixtures.float64_throughout():
        return _check_gradients(pairs, case, grads32, loss32)


def _check_gradients(pairs, case, grads32, loss32):
    model = peft_model(torch.float64)
    loss64, _ = loss_of(model, pairs, case)
    loss64.backward()
    params = lora_params(model)
    g64 = {k: p.grad.detach().clone() for k, p in params.items()}
    g = torch.Generator().manual_seed(11)
    direction = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    length = math.sqrt(sum((d * d).sum().item() for d in direction.values()))
    direction = {k: d / length for k, d in direction.items()}
    analytic = sum((g64[k] * direction[k]).sum().item() for k in params)
    values = []
    h = 1e-4
    for sign in (1, -1):
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in lora_params(shifted).items():
                p.add_(sign * h * direction[k])
            values.append(loss_of(shifted, pairs, case)[0].item())
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, global_norm(g64.values())), (numeric, analytic)
    assert abs(loss64.item() - loss32) <= 1e-4 * max(1.0, abs(loss32)), (loss64.item(), loss32)
    worst = 0.0
    for k in g64:
        scale = g64[k].abs().max().item()
        err = (grads32[k].double() - g64[k]).abs().max().item()
        worst = max(worst, err / max(scale, 1e-12))
        assert err <= 1e-3 * max(scale, 1e-3), (k, err, scale)
    return worst, numeric, analytic


def adamw_run(pairs, case):
    model = peft_model()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    params = lora_params(model)
    opt = torch.optim.AdamW(list(params.values()), lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    losses, norms = [], []
    for step in range(ADAMW["steps"] + 1):
        loss = loss_of(model, pairs, case)[0]
        losses.append(loss.item())
        if step == ADAMW["steps"]:
            break
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), ADAMW["max_grad_norm"]).item())
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), f"{n} moved"
    assert losses[-1] < losses[0], losses
    return losses, norms, {k: p.detach().clone().contiguous() for k, p in params.items()}


def main():
    doc = json.loads((FIXTURES / "dpo" / "cases.json").read_text())
    pairs = doc["pairs"]
    case = next(c for c in doc["cases"] if c["name"] == CASE)
    OUT.mkdir(parents=True, exist_ok=True)
    model = peft_model()
    start = OUT / "start"
    model.save_pretrained(start)
    cfg_path = start / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "tests/fixtures/llama"
    cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set: any order
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    card = start / "README.md"
    if card.exists():
        card.unlink()

    loss, metrics = loss_of(model, pairs, case)
    loss.backward()
    params = lora_params(model)
    grads = {k: p.grad.detach().clone().contiguous() for k, p in params.items()}
    metrics["grad_norm"] = global_norm(grads.values())
    worst, numeric, analytic = check_gradients(pairs, case, grads, loss.item())
    print(f"{CASE} with LoRA: loss {loss.item():.6f}, grad_norm {metrics['grad_norm']:.6f}; "
          f"f32 grads vs f64 worst rel {worst:.1e}; finite difference {numeric:.8f} vs autograd {analytic:.8f}")
    save_file(grads, str(OUT / "grads.safetensors"))

    losses, norms, after = adamw_run(pairs, case)
    print(f"adamw: losses {[round(v, 6) for v in losses]}, grad norms {[round(v, 6) for v in norms]}")
    save_file(after, str(OUT / "adamw.safetensors"))
    out = {"case": CASE, "loss": loss.item(), "metrics": metrics,
           "adamw": {**{k: v for k, v in ADAMW.items() if k != "steps"}, "losses": losses, "grad_norms": norms}}
    (OUT / "case.json").write_text(json.dumps(out, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
