"""Writes N prompts that each tokenize to exactly LEN tokens (BOS included) with the model's
tokenizer, as JSONL, for scripts/bench-generate.sh. Usage: make_bench_prompts.py MODEL_DIR OUT N LEN"""

import json
import random
import sys

from transformers import AutoTokenizer


def main():
    model_dir, out, n, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    words = [w for w in tok.get_vocab() if w.startswith("\u0120") and w[1:].isalpha()]
    lines = []
    while len(lines) < n:
        text = rng.choice(words)[1:]
        while len(tok(text)["input_ids"]) < length:
            text += " " + rng.choice(words)[1:]
        if len(tok(text)["input_ids"]) == length:
            lines.append(json.dumps({"prompt": text}))
    open(out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
