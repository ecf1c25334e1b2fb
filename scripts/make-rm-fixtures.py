"""Writes the reward-model fixtures under tests/fixtures/: tiny random sequence-classification
checkpoints and the scores transformers gives them. Run by developers (scripts/python-env.sh
first), never by CI:

    .venv/bin/python scripts/make-rm-fixtures.py

Both reuse the tokenizer of tests/fixtures/chat (made by scripts/make-fixtures.py; only read):
  rm-llama   LlamaForSequenceClassification, GQA, float32, pad_token_id 1 (<|eos|>, which the
             chat template never writes), the chat fixture's template unchanged
  rm-qwen2   Qwen2ForSequenceClassification (q/k/v biases), GQA, bfloat16 weights,
             tie_word_embeddings true (a classifier has no LM head to tie), pad_token_id 2
             (<|end|>) and a template whose turns end in <|end|> with no newline: every text
             ends in the pad token id, so transformers scores the token before it

Each directory gets config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
expected.json:
  "pad_token_id"
  "cases": [{"instruction", "response",
             "text"      apply_chat_template([user, assistant], tokenize=False) (no generation
                         prompt)
             "ids"       tokenizer(text, add_special_tokens=False), equal to
                         apply_chat_template(tokenize=True)
             "position"  the token transformers scores: the rightmost one that is not
                         pad_token_id
             "score"     the model's (1, 1) logits, float32, the sequence run on its own
             "score_no_pad_id"   the same with config.pad_token_id = None (last token)}]
Reference scores are computed in float32 from exactly the stored weights.
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, Qwen2Config,
                          Qwen2ForSequenceClassification)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CHAT = FIXTURES / "chat"

spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make-fixtures.py")
make_fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_fixtures)

CASES = [
    ("Name three colors.", "Red, green and blue."),
    ("Name three colors.", "Purple."),
    ("Name three colors.", "I would rather not say."),
    ("What is 417 plus 26? Think step by step.", "443"),
    ("What is 417 plus 26? Think step by step.",
     "First add 400 and 20 to get 420, then 17 and 6 to get 23; 420 plus 23 is 443. The answer is 443."),
    ("Why is the sky blue?", "Rayleigh scattering: shorter wavelengths scatter more, so blue light "
     "reaches the eye from every direction of the sky. " * 2),
    ("Hi", "Hello!\nHow can I help?"),
]

QWEN2_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
                  "{{ message['content'] }}<|end|>{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def make(name, model, seed, dtype=torch.float32, template=None):
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(CHAT / "tokenizer.json", out / "tokenizer.json")
    tok_config = json.loads((CHAT / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = model.config.max_position_embeddings
    if template is not None:
        tok_config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    tok = AutoTokenizer.from_pretrained(out)

    make_fixtures.randomize(model, seed)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    pad = model.config.pad_token_id
    cases = []
    for instruction, response in CASES:
        chat = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
        text = tok.apply_chat_template(chat, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        templated = tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        assert ids == templated, (ids, templated)
        assert len(ids) <= model.config.max_position_embeddings
        position = max(i for i, t in enumerate(ids) if t != pad)
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            model.config.pad_token_id = pad
            score = model(input_ids=input_ids).logits
            model.config.pad_token_id = None
            score_no_pad_id = model(input_ids=input_ids).logits
            model.config.pad_token_id = pad
        assert score.shape == (1, 1)
        cases.append({"instruction": instruction, "response": response, "text": text, "ids": ids,
                      "position": position, "score": score.item(),
                      "score_no_pad_id": score_no_pad_id.item()})
    expected = {"pad_token_id": pad, "cases": cases}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    model.to(dtype).save_pretrained(out)
    for f in out.glob("generation_config.json"):
        f.unlink()
    print(f"wrote {out}: scores {[round(c['score'], 4) for c in cases]}")


def main():
    torch.manual_seed(0)
    vocab = json.loads((CHAT / "config.json").read_text())["vocab_size"]
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, num_labels=1)
    llama = LlamaConfig(**common, pad_token_id=1, rope_theta=10000.0, tie_word_embeddings=False)
    make("rm-llama", LlamaForSequenceClassification(llama), seed=11)
    qwen2 = Qwen2Config(**common, pad_token_id=2, rope_theta=1000.0, tie_word_embeddings=True)
    make("rm-qwen2", Qwen2ForSequenceClassification(qwen2), seed=12, dtype=torch.bfloat16,
         template=QWEN2_TEMPLATE)


if __name__ == "__main__":
    sys.exit(main())
