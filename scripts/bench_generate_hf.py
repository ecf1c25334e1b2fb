"""transformers' generate on the benchmark config, for scripts/bench-generate.sh.

Usage: bench_generate_hf.py MODEL_DIR PROMPTS_JSONL THREADS
Prints one line: `transformers: N tokens in S s (R tokens/s)`.
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_dir, prompts_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [json.loads(line)["prompt"] for line in open(prompts_path) if line.strip()]
    ids = torch.tensor([tok(t)["input_ids"] for t in texts])
    samples, new = 8, 64
    kwargs = dict(do_sample=True, temperature=0.8, top_p=0.95, top_k=0, num_return_sequences=samples,
                  max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        best = None
        for _ in range(3):
            torch.manual_seed(0)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            secs = time.perf_counter() - start
            best = secs if best is None else min(best, secs)
    tokens = out.shape[0] * (out.shape[1] - ids.shape[1])
    print(f"transformers: {tokens} tokens in {best:.3f} s ({tokens / best:.0f} tokens/s), "
          f"prompt {tuple(ids.shape)}, torch {torch.__version__}, {threads} threads")


if __name__ == "__main__":
    main()
