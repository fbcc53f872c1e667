#!/usr/bin/env python3
"""Table of bench/gpu.sh: chatforge runs (metrics.jsonl per run directory) next to the PyTorch
JSON lines, tokens/s as the median over steps after warm-up, MFU against the H100/H200 dense bf16
peak (989 TFLOP/s) with the same FLOPs-per-token formula for both (chatforge's flops_per_token)."""
import json
import statistics
import sys

PEAK = 989e12
L, D, V, T = 12, 768, 50304, 1024
N_MATMUL = 12 * L * D * D + V * D  # 124M GPT-2 without embeddings, plus the output projection
FLOPS_PER_TOKEN = 6 * N_MATMUL + 12 * L * D * T


def chatforge_row(run_dir, dtype):
    recs = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl")]
    tps = [r["tokens_per_sec"] for r in recs if r["kind"] == "train"]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    return {"impl": "chatforge (candle CUDA)", "dtype": dtype, "tokens_per_sec": statistics.median(tps[3:]),
            "loss_first": losses[0], "loss_last": losses[-1]}


def main(out_json, torch_json, *runs):
    rows = [chatforge_row(r.split("=")[1], r.split("=")[0]) for r in runs]
    rows += [json.loads(l) for l in open(torch_json) if l.startswith("{")]
    base = {r["dtype"]: r["tokens_per_sec"] for r in rows if r["impl"] == "pytorch eager"}
    print(f"GPT-2 124M, context {T}, batch 8, AdamW, one H200 — median tokens/s after 3 warm-up steps")
    print(f"| implementation | precision | tokens/s | MFU | vs PyTorch eager | loss first -> last |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["mfu"] = r["tokens_per_sec"] * FLOPS_PER_TOKEN / PEAK
        ratio = r["tokens_per_sec"] / base[r["dtype"]] if r["dtype"] in base else float("nan")
        print(f"| {r['impl']} | {r['dtype']} | {r['tokens_per_sec']:,.0f} | {100 * r['mfu']:.1f}% | {ratio:.2f}x "
              f"| {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    json.dump({"flops_per_token": FLOPS_PER_TOKEN, "peak_flops": PEAK, "rows": rows}, open(out_json, "w"), indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
