"""PyTorch's eager time for one DPO training step on the benchmark config, the baseline of
scripts/bench-train.sh. The step is what TRL's DPOTrainer does on CPU, written out: chosen and
rejected sequences in one batch, one forward to full logits, log_softmax, the completion tokens'
log-probs gathered and summed, the sigmoid loss against fixed reference log-probs, backward,
gradient clipping to norm 1, an AdamW update, zero_grad.

Usage: bench_train_torch.py [--model DIR | --shape 7m|135m] [--precision f32|bf16]
                            [--threads 2] [--warmup 2] [--steps 10]
                            [--pairs 4] [--seq-len 256] [--prompt-len 64]
Without --model the weights are random, at --shape: 7m (Llama, hidden 256, 4 layers, 8 heads,
4 KV heads, head_dim 32, intermediate 688, vocab 8192, untied embeddings) or 135m (hidden 576,
30 layers, 9 heads, 3 KV heads, head_dim 64, intermediate 1536, vocab 49152, tied).
--precision f32 is eager attention in f32 ("pytorch-eager"); bf16 is what a user with a CPU
box would pick: SDPA attention under torch.autocast("cpu", bfloat16), f32 weights and
AdamW ("pytorch-sdpa-bf16"). Prints one line of JSON: impl, threads, tokens_per_step (every
token of the batch), median and best step time in ms and the tokens/s they give, torch
version.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

BETA = 0.1


def bench_config(shape):
    if shape == "135m":
        return LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=64, intermediate_size=1536,
                           max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
                           rope_theta=100000.0, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=32, intermediate_size=688, max_position_embeddings=1024,
                       tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1,
                       eos_token_id=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint directory; random benchmark config when left out")
    ap.add_argument("--shape", choices=["7m", "135m"], default="7m")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    args = ap.parse_args()
    assert 0 < args.prompt_len < args.seq_len and args.steps > 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    attn = "eager" if args.precision == "f32" else "sdpa"
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attn)
    else:
        model = LlamaForCausalLM._from_config(bench_config(args.shape), dtype=torch.float32,
                                              attn_implementation=attn)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    model.train()
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

    # Rows 0..pairs-1 are the chosen sequences, the next pairs rows the rejected ones.
    rows = 2 * args.pairs
    ids = torch.randint(1, vocab, (rows, args.seq_len))
    completion = torch.zeros(rows, args.seq_len, dtype=torch.bool)
    completion[:, args.prompt_len:] = True
    # As TRL does: position t scores token t + 1; the last position scores nothing.
    labels = torch.roll(ids, -1, dims=1)
    label_mask = torch.roll(completion, -1, dims=1)
    label_mask[:, -1] = False
    ref_logps = -6.0 * (args.seq_len - args.prompt_len) + torch.randn(rows)

    def step():
        with autocast:
            logits = model(input_ids=ids).logits  # (rows, seq_len, vocab)
        token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]
        logps = (token_logps * label_mask).sum(-1)
        pi_c, pi_r = logps[: args.pairs], logps[args.pairs :]
        rho_c, rho_r = ref_logps[: args.pairs], ref_logps[args.pairs :]
        loss = -F.logsigmoid(BETA * ((pi_c - rho_c) - (pi_r - rho_r))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    tokens = rows * args.seq_len
    median, best = statistics.median(times), min(times)
    print(json.dumps({
        "impl": "pytorch-eager" if args.precision == "f32" else "pytorch-sdpa-bf16",
        "shape": args.model or args.shape,
        "threads": args.threads,
        "tokens_per_step": tokens,
        "step_ms_median": round(1e3 * median, 3),
        "step_ms_best": round(1e3 * best, 3),
        "tokens_per_s_median": round(tokens / median, 1),
        "tokens_per_s_best": round(tokens / best, 1),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
