#!/usr/bin/env python3
"""Joins the JSON lines of benches/gpu.rs (tpo-engine) and scripts/gpu_bench_torch.py
(PyTorch) on (bench, shape) into one markdown table with the issue's targets:

    python3 scripts/gpu_bench_table.py TPO.jsonl TORCH.jsonl

A missing file, a line that is not JSON, an error or a measurement one side never printed
(a timeout, a crash) shows in the table as such; the script itself never fails on them.
"""

import json
import sys

# (bench, what the target is): checked in `target_of`.
ROWS_BW = 0.70  # the log-prob pass's non-GEMM part: fraction of the card's bandwidth
ADAMW_BW = 0.80
ATTN_RATIO = 0.60  # attention fwd+bwd: fraction of torch SDPA (flash) TFLOP/s
DATASHEET_GBPS = {"H200": 4800, "H100 PCIE": 2000, "H100 NVL": 3900, "H100": 3350}


def read(path):
    """(measurement lines keyed by (bench, shape) in file order, other lines, problems)."""
    lines, other, problems = {}, [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read().splitlines()
    except OSError as e:
        return lines, other, [f"{path}: {e.strerror}"]
    for text in raw:
        text = text.strip()
        if not text.startswith("{"):
            continue
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            problems.append(f"{path}: not JSON: {text[:80]}")
            continue
        if "shape" in d and "bench" in d:
            lines[(d["bench"], d["shape"])] = d
        else:
            other.append(d)
    return lines, other, problems


def fmt_value(d):
    if d is None:
        return "missing (not run: timed out or crashed?)"
    if "error" in d:
        return "FAILED: " + d["error"].replace("|", "/").replace("\n", " ")[:120]
    ms = d.get("ms")
    if "tokens_per_s" in d:
        mfu = d.get("mfu")
        s = f"{d['tokens_per_s']:,.0f} tok/s, {ms:,.0f} ms/step"
        return s + (f", MFU {mfu:.1%}" if mfu is not None else ", MFU ? (unknown card)")
    if "tflops" in d:
        return f"{d['tflops']:.1f} TFLOP/s ({ms:.2f} ms)"
    if "gbps" in d:
        return f"{d['gbps']:,.0f} GB/s ({ms:.3f} ms)"
    if "us" in d:
        return f"{d['us']:.1f} µs"
    return f"{ms:.3f} ms" if ms is not None else "?"


def ok(d):
    return d is not None and "error" not in d and "ms" in d


def ratio_of(tpo, torch):
    """tpo-engine over PyTorch in throughput (> 1: tpo-engine faster)."""
    if not (ok(tpo) and ok(torch)):
        return None
    for key in ("tokens_per_s", "tflops", "gbps"):
        if key in tpo and key in torch and torch[key]:
            return tpo[key] / torch[key]
    return torch["ms"] / tpo["ms"] if tpo["ms"] else None


def target_of(bench, tpo, ratio, bw):
    """(target text, met?) for a row."""
    def bw_target(frac):
        if bw is None:
            return f"≥ {frac:.0%} of memory bandwidth (unmeasured)", "?"
        text = f"≥ {frac:.0%} of {bw:,.0f} GB/s (d2d copy)"
        if not ok(tpo):
            return text, "?" if tpo is None else "no (failed)"
        return text, "yes" if tpo["gbps"] >= frac * bw else "no"

    if bench == "attn_fwd_bwd":
        text = f"≥ {ATTN_RATIO:.2f} × torch"
        return text, "?" if ratio is None else ("yes" if ratio >= ATTN_RATIO else "no")
    if bench in ("logprob_rows", "logprob_grad_rows",
                 "logprob_rows_128rows", "logprob_grad_rows_128rows"):
        return bw_target(ROWS_BW)
    if bench == "adamw":
        return bw_target(ADAMW_BW)
    if bench in ("logprobs_fwd", "logprobs_fwd_bwd"):
        if not ok(tpo) or "logits_scratch_bytes" not in tpo:
            return "no full logits", "?"
        held, full = tpo["logits_scratch_bytes"], tpo["full_logits_bf16_bytes"]
        return (f"no full logits (holds {held / 2**20:,.0f} MiB; full bf16: {full / 2**30:.1f} GiB)",
                "yes" if held < full else "no")
    if bench == "train_step":
        return "report tokens/s, MFU", "—"
    return "—", "—"


def main():
    tpo_path, torch_path = (sys.argv[1:3] + [None, None])[:2]
    tpo, tpo_other, problems = read(tpo_path) if tpo_path else ({}, [], ["no tpo-engine file"])
    torch, torch_other, more = read(torch_path) if torch_path else ({}, [], ["no PyTorch file"])
    problems += more
    keys = list(tpo) + [k for k in torch if k not in tpo]
    bw = None
    for src in (tpo, torch):
        d = src.get(("memcpy_d2d", "2 GiB"))
        if bw is None and ok(d):
            bw = d["gbps"]
    devices = {d.get("impl"): d for d in tpo_other + torch_other if d.get("bench") == "device"}
    skipped = [f"{d['bench']}: skipped: {d['skipped']}" for d in tpo_other + torch_other
               if "skipped" in d]

    print("| benchmark | shape | tpo-engine | PyTorch | ratio | target | met? |")
    print("|---|---|---|---|---|---|---|")
    for bench, shape in keys:
        a, b = tpo.get((bench, shape)), torch.get((bench, shape))
        r = ratio_of(a, b)
        target, met = target_of(bench, a, r, bw)
        if bench.endswith("_1launch"):
            target, met = "— (the kernel alone, for comparison)", "—"
        if shape == "*":
            shape = "(whole group)"
        print(f"| {bench} | {shape} | {fmt_value(a)} | {fmt_value(b)} | "
              f"{'—' if r is None else f'{r:.2f}'} | {target} | {met} |")
    if not keys:
        print("| (no measurements) | | | | | | |")
    print()
    for impl in ("tpo-engine", "torch"):
        d = devices.get(impl)
        if d:
            extra = f", torch {d['torch']}" if "torch" in d else ""
            print(f"- {impl}: {d.get('name')}{extra}, bf16 dense peak "
                  f"{d.get('bf16_dense_peak_tflops')} TFLOP/s; {d.get('timing')}")
    name = (devices.get("tpo-engine") or devices.get("torch") or {}).get("name", "").upper()
    sheet = next((v for k, v in DATASHEET_GBPS.items() if k in name), None)
    if bw is not None:
        print(f"- memory bandwidth yardstick: the d2d copy above, {bw:,.0f} GB/s (read + write)"
              + (f"; datasheet {sheet:,} GB/s" if sheet else ""))
    print("- ratio: tpo-engine / PyTorch throughput (TFLOP/s, GB/s or tokens/s, each side "
          "counting its own bytes, see the JSON; µs rows: PyTorch time / tpo-engine time); "
          "> 1: tpo-engine faster")
    for s in skipped + problems:
        print(f"- {s}")


if __name__ == "__main__":
    main()
