"""transformers' generate, for scripts/bench-generate.sh.

Usage: bench_generate_hf.py MODEL_DIR PROMPTS_JSONL THREADS [--dtype f32|bf16] [--samples 8]
                            [--new-tokens 64] [--runs 5]
Samples at temperature 0.8 and top-p 0.95, every completion exactly --new-tokens long.
Prints one line: tokens generated, best and median tokens/s of the runs.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("prompts")
    ap.add_argument("threads", type=int)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).eval()
    texts = [json.loads(line)["prompt"] for line in open(args.prompts) if line.strip()]
    ids = torch.tensor([tok(t)["input_ids"] for t in texts])
    new = args.new_tokens
    kwargs = dict(do_sample=True, temperature=0.8, top_p=0.95, top_k=0, num_return_sequences=args.samples,
                  max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        times = []
        for run in range(args.runs):
            torch.manual_seed(run)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            times.append(time.perf_counter() - start)
    tokens = out.shape[0] * (out.shape[1] - ids.shape[1])
    print(f"transformers {args.dtype}: {tokens} tokens; tokens/s best {tokens / min(times):.0f}, "
          f"median {tokens / statistics.median(times):.0f} ({args.runs} runs; prompt {tuple(ids.shape)}, "
          f"torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
