"""Writes tests/fixtures/peft-lora/: a LoRA adapter made by PEFT itself for the tiny Llama
fixture (tests/fixtures/llama), and the logits PEFT computes with it. Run by developers
(scripts/python-env.sh first), never by CI:

    .venv/bin/python scripts/make-peft-fixtures.py

Files:
  adapter_config.json, adapter_model.safetensors   PEFT's save_pretrained, untouched
  expected.json         the input ids
  logits.safetensors    "logits": (T, V) f32, the adapted model's logits (PEFT, unmerged)
The adapter: r 4, lora_alpha 8 (scale 2), q/v/o/gate/down, B set to random values (PEFT
initialises B to zero, which would make the adapter the base model).
"""

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "tests" / "fixtures" / "llama"
OUT = ROOT / "tests" / "fixtures" / "peft-lora"


def main():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    peft_model.eval()
    OUT.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(OUT)
    # The base as the repository names it, not this machine's path.
    cfg_path = OUT / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "tests/fixtures/llama"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    ids = [5, 17, 201, 33, 90, 4, 250, 128, 77, 12]
    with torch.no_grad():
        logits = peft_model(torch.tensor([ids])).logits[0].contiguous()
    save_file({"logits": logits}, OUT / "logits.safetensors")
    (OUT / "expected.json").write_text(json.dumps({"input_ids": ids}) + "\n")
    # README.md that PEFT writes is a model card template: not needed here.
    card = OUT / "README.md"
    if card.exists():
        card.unlink()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
