"""torch.matmul at the product shapes of benches/gemm.rs, in f32 and bf16, for
scripts/bench-gemm.sh. Usage: gemm_torch.py THREADS CHUNK_ROWS
Prints one JSON line per (product, pass, dtype): median ms of 7 runs after 2 warm-ups and
GFLOP/s. The forward is inp @ weight.T; the backward is dout @ weight and dout.T @ inp,
timed together, as ours. The "decode_" products are the forwards of one generation decode
step (64 rows), each over 30 layers' weights in turn (the LM head: one), as ours."""

import json
import statistics
import sys
import time

import torch

N, C, KV, I, V = 2048, 576, 192, 1536, 49152
DECODE, LAYERS = 64, 30


def timed(f):
    for _ in range(2):
        f()
    t = []
    for _ in range(7):
        start = time.perf_counter()
        f()
        t.append(time.perf_counter() - start)
    return statistics.median(t)


def main():
    threads, head_rows = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shapes = [("qkv_proj", N, C, C + 2 * KV), ("o_proj", N, C, C), ("gate_up_proj", N, C, 2 * I),
              ("down_proj", N, I, C), ("lm_head_chunk", head_rows, C, V)]
    for dtype, tag in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        for name, n, c, oc in shapes:
            inp = torch.randn(n, c, dtype=dtype)
            weight = torch.randn(oc, c, dtype=dtype) * 0.02
            dout = torch.randn(n, oc, dtype=dtype)
            flops = 2.0 * n * c * oc
            with torch.no_grad():
                secs = timed(lambda: torch.matmul(inp, weight.t()))
                print(json.dumps({"impl": f"torch-{tag}", "name": name, "pass": "forward", "n": n, "c": c,
                                  "oc": oc, "ms": round(secs * 1e3, 3), "gflops": round(flops / secs / 1e9, 1)}))
                secs = timed(lambda: (torch.matmul(dout, weight), torch.matmul(dout.t(), inp)))
                print(json.dumps({"impl": f"torch-{tag}", "name": name, "pass": "backward", "n": n, "c": c,
                                  "oc": oc, "ms": round(secs * 1e3, 3),
                                  "gflops": round(2 * flops / secs / 1e9, 1)}))
    decode = [("decode_qkv_proj", C, C + 2 * KV), ("decode_o_proj", C, C), ("decode_gate_up_proj", C, 2 * I),
              ("decode_down_proj", I, C), ("decode_lm_head", C, V)]
    for dtype, tag in [(torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        for name, c, oc in decode:
            layers = 1 if name == "decode_lm_head" else LAYERS
            inp = torch.randn(DECODE, c, dtype=dtype)
            weights = [torch.randn(oc, c, dtype=dtype) * 0.02 for _ in range(layers)]
            flops = 2.0 * DECODE * c * oc * layers
            with torch.no_grad():
                secs = timed(lambda: [torch.matmul(inp, w.t()) for w in weights])
            print(json.dumps({"impl": f"torch-{tag}", "name": name, "pass": "forward", "n": DECODE, "c": c,
                              "oc": oc, "ms": round(secs * 1e3, 3), "gflops": round(flops / secs / 1e9, 1)}))


if __name__ == "__main__":
    main()
