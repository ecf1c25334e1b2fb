"""Writes the parity fixtures under tests/fixtures/: tiny random checkpoints and what
transformers computes on them. Run by developers (scripts/python-env.sh first), never by CI:

    .venv/bin/python scripts/make-fixtures.py

Each model directory gets:
  config.json, *.safetensors (one file, or shards with an index), generation_config.json
  expected.json         input ids of a right-padded batch, its lengths, greedy continuations
  logits.safetensors    "logits": (B, T, V) f32, transformers' logits for that batch
The chat directory is made by `tpo-engine init-model` and gets tokenizer_expected.json:
what transformers' tokenizer and chat template produce for a few inputs.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
VOCAB = 256


def randomize(model, seed):
    """Weights large enough that logits spread (so greedy argmax has clear margins)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "o_proj" in name or "down_proj" in name:
                # Layers outweigh the embedding, or a tied head just echoes the last token.
                p.copy_(3.0 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def write_expected(model, out, seed):
    g = torch.Generator().manual_seed(seed + 1)
    lengths = [7, 12, 3]
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    save_file({"logits": logits.contiguous()}, str(out / "logits.safetensors"))
    greedy = []
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    for i, n in enumerate(lengths[:2]):
        prompt = ids[i : i + 1, :n]
        with torch.no_grad():
            gen = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
        greedy.append({"prompt": prompt[0].tolist(), "tokens": gen[0, n:].tolist()})
    expected = {"input_ids": ids.tolist(), "lengths": lengths, "greedy": greedy}
    (out / "expected.json").write_text(json.dumps(expected) + "\n")


def make(name, model, seed, dtype=torch.float32, shard=None):
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors*"):
        old.unlink()
    randomize(model, seed)
    model.eval()
    # Reference logits come from exactly the stored weights: round the parameters (not the
    # rotary buffers, which a loaded model computes afresh in f32), compute in f32.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    write_expected(model, out, seed)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(out, **kwargs)
    print(f"wrote {out}")


def chat_fixture():
    out = FIXTURES / "chat"
    if out.exists():
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    subprocess.run(["cargo", "run", "--release", "--quiet", "--", "init-model", "--out", str(out),
                    "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1",
                    "--intermediate", "64", "--vocab", "600", "--max-positions", "128", "--seed", "3"],
                   cwd=ROOT, check=True)
    tok = AutoTokenizer.from_pretrained(out)
    texts = ["Hello world!", "What is 417 plus 26? Think step by step.", "  spaces  and\nnewlines\t."]
    chats = [
        [{"role": "user", "content": "Name three colors."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"},
         {"role": "assistant", "content": "Scattering."}, {"role": "user", "content": "More detail?"}],
    ]
    expected = {
        "raw": [{"text": t, "ids": tok(t)["input_ids"]} for t in texts],
        "chat": [{"messages": m,
                  "text": tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                  "ids": tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]} for m in chats],
    }
    # Our checkpoint writer must load in transformers unchanged: its logits become a fixture.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([expected["raw"][1]["ids"]])
    with torch.no_grad():
        expected["logits_last"] = model(input_ids=ids).logits[0, -1].tolist()
    expected["logits_input"] = ids[0].tolist()
    (out / "tokenizer_expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out}")


def main():
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                  max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    llama = LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                        rope_theta=10000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    make("llama", LlamaForCausalLM(llama), seed=1)
    qwen2 = Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                        rope_theta=1000.0)
    make("qwen2", Qwen2ForCausalLM(qwen2), seed=2, dtype=torch.bfloat16)
    mistral = MistralConfig(**common, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                            sliding_window=4096, tie_word_embeddings=False, rope_theta=10000.0)
    make("mistral", MistralForCausalLM(mistral), seed=3, shard="100KB")
    chat_fixture()


if __name__ == "__main__":
    sys.exit(main())
