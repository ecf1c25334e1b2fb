"""transformers' generate on the benchmark config, for scripts/bench-generate.sh.

Usage: bench_generate_hf.py MODEL_DIR PROMPTS_JSONL THREADS
Prints one line: tokens generated, best and median tokens/s of 5 runs.
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
        times = []
        for run in range(5):
            torch.manual_seed(run)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            times.append(time.perf_counter() - start)
    tokens = out.shape[0] * (out.shape[1] - ids.shape[1])
    times.sort()
    print(f"transformers: {tokens} tokens; tokens/s best {tokens / times[0]:.0f}, median {tokens / times[2]:.0f} "
          f"(5 runs; prompt {tuple(ids.shape)}, torch {torch.__version__}, {threads} threads)")


if __name__ == "__main__":
    main()
