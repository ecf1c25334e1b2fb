#!/usr/bin/env bash
# Writes tests/fixtures/lora-ours/: an adapter that tpo-engine itself trained (sft --lora-r on
# the chat fixture), and the logits PEFT computes with it after PeftModel.from_pretrained,
# so that tests/peft_adapters.rs checks that PEFT reads our adapters as we do; and checks
# here that transformers, loading `tpo-engine merge`'s checkpoint of it, gives PEFT's
# logits (within 1e-4). Run by
# developers (scripts/python-env.sh first), never by CI:
#
#     scripts/make-lora-ours-fixture.sh
#
# Files: adapter_config.json, adapter_model.safetensors (ours, untouched); expected.json
# (the input ids); logits.safetensors ("logits": (T, V) f32, PEFT's, unmerged).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/python-env.sh first" >&2; exit 1; }
cargo build --release --quiet
out=tests/fixtures/lora-ours
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/data.jsonl" <<'EOF'
{"prompt": "Name a color.", "completion": "Blue, like the sky."}
{"prompt": "Say hello.", "completion": "Hello there, friend!"}
EOF
target/release/tpo-engine --threads 2 sft --model tests/fixtures/chat --data "$tmp/data.jsonl" \
  --out "$tmp/run" --lora-r 4 --lora-alpha 8 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  --lr 5e-2 --lr-schedule constant --epochs 10 --batch-size 2 --seed 3 2>/dev/null
rm -rf "$out"
mkdir -p "$out"
cp "$tmp/run/adapter/adapter_config.json" "$tmp/run/adapter/adapter_model.safetensors" "$out/"
# Our merge of it, which transformers must load and run as PEFT runs the adapter.
target/release/tpo-engine merge --model tests/fixtures/chat --adapter "$out" --out "$tmp/merged" 2>/dev/null
OUT=$out MERGED=$tmp/merged .venv/bin/python - <<'PY'
import json, os
from pathlib import Path
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

out = Path(os.environ["OUT"])
base = AutoModelForCausalLM.from_pretrained("tests/fixtures/chat", dtype=torch.float32)
model = PeftModel.from_pretrained(base, out).eval()
# Every tensor of ours was read: PEFT warns of missing or unexpected keys, so check both ways.
ours = set(load_file(out / "adapter_model.safetensors"))
loaded = {n.replace(".default", "") for n, _ in model.named_parameters() if "lora_" in n}
assert ours == loaded, (sorted(ours ^ loaded)[:5])
moved = max(p.abs().max().item() for n, p in model.named_parameters() if "lora_B" in n)
assert moved > 0, "the adapter has not learnt"
ids = [5, 17, 201, 33, 90, 4, 250, 128, 77, 12]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].contiguous()
merged = AutoModelForCausalLM.from_pretrained(os.environ["MERGED"], dtype=torch.float32).eval()
with torch.no_grad():
    merged_logits = merged(torch.tensor([ids])).logits[0]
err = (merged_logits - logits).abs().max().item()
assert err <= 1e-4, f"transformers on our merged checkpoint differs from PEFT by {err}"
save_file({"logits": logits}, out / "logits.safetensors")
(out / "expected.json").write_text(json.dumps({"input_ids": ids}) + "\n")
print(f"wrote {out}: PEFT read {len(loaded)} tensors of ours; largest |B| {moved:.4f}; "
      f"transformers on our merged checkpoint within {err:.1e} of PEFT's logits")
PY
