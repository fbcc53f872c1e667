#!/usr/bin/env python3
"""Tables of bench/cpu.sh from one pass's work directory; writes RESULTS/cpu_{train,gemm,decode}SUFFIX.json
(SUFFIX from the environment: "" for the CPU as it is, "_avx2" for the AVX2 pass on an AVX-512 CPU),
each with the CPU and the SIMD the pass used (CPU, SIMD_USED).

Training tokens/s of one run is the median over its steps after 3 warm-up steps; the figure of a
configuration is the median over runs. MFU counts 6 x (matmul parameters incl. the output
projection) + 12 L T C FLOPs per token (chatforge's `flops_per_token`) against the fp32 peak of the
threads used: 2 FMA units per core at PEAK_GHZ (bench/cpu.sh: the nominal clock of /proc/cpuinfo;
a core that boosts above it shows a higher MFU than it has), 64 FLOP/cycle with AVX-512 and 32 with
AVX2."""
import json
import os
import statistics
import sys

SHAPES = {"reference": dict(L=6, C=384, V=8192, T=256), "gpt2-124m": dict(L=12, C=768, V=50304, T=128)}
SIMD = os.environ.get("SIMD_USED", "avx512")
SUFFIX = os.environ.get("SUFFIX", "")
CPU = os.environ.get("CPU", "")
PEAK_GHZ = float(os.environ.get("PEAK_GHZ", "2.3"))
PEAK_PER_THREAD = (64 if SIMD == "avx512" else 32) * PEAK_GHZ * 1e9


def flops_per_token(L, C, V, T):
    return 6 * (12 * L * C * C + V * C) + 12 * L * C * T


def run_tps(metrics_path, warm=3):
    recs = [json.loads(l) for l in open(metrics_path)]
    tr = [r for r in recs if r["kind"] == "train"]
    return statistics.median(r["tokens_per_sec"] for r in tr[warm:]), tr[0]["loss"], tr[-1]["loss"]


def main(results, work):
    threads = int(os.environ.get("THREADS", "2"))
    peak = threads * PEAK_PER_THREAD
    cf = {}
    for line in open(f"{work}/cf-runs.txt"):
        name, path = line.strip().split("=", 1)
        cf.setdefault(name, []).append(run_tps(path))
    pt = {}
    for line in open(f"{work}/torch-train.jsonl"):
        r = json.loads(line)
        pt.setdefault(r["model"], []).append(r)
    rows = []
    print(f"\n== {CPU}, kernels: {SIMD}")
    print(f"\nTraining (fp32, AdamW, {threads} threads): tokens/s, median of steps after warm-up, median of runs; "
          f"MFU at {PEAK_GHZ} GHz")
    print("| model | chatforge | PyTorch | chatforge / PyTorch | chatforge MFU | PyTorch MFU | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in cf.items():
        fpt = flops_per_token(**SHAPES[name])
        c = statistics.median(r[0] for r in runs)
        p = statistics.median(r["tokens_per_sec"] for r in pt[name])
        rows.append({"model": name, "chatforge_tokens_per_sec": c, "pytorch_tokens_per_sec": p, "ratio": c / p,
                     "chatforge_runs": [r[0] for r in runs], "pytorch_runs": [r["tokens_per_sec"] for r in pt[name]],
                     "chatforge_loss_first_last": [runs[0][1], runs[0][2]],
                     "pytorch_loss_first_last": [pt[name][0]["loss_first"], pt[name][0]["loss_last"]],
                     "flops_per_token": fpt, "chatforge_mfu": c * fpt / peak, "pytorch_mfu": p * fpt / peak})
        print(f"| {name} | {c:,.0f} | {p:,.0f} | {c / p:.2f}x | {100 * c * fpt / peak:.1f}% | {100 * p * fpt / peak:.1f}% "
              f"| {len(runs)} |")
    json.dump({"cpu": CPU, "simd": SIMD, "threads": threads, "peak_flops": peak, "rows": rows},
              open(f"{results}/cpu_train{SUFFIX}.json", "w"), indent=2)

    gemm = [json.loads(l) for l in open(f"{work}/gemm.jsonl")]
    print(f"\nGEMM GFLOP/s on the reference model's products ({threads} threads), median of 7")
    impls = ["chatforge", "gemm crate", "pytorch"]
    ours = "chatforge (AVX-512)" if SIMD == "avx512" else "chatforge (the gemm crate)"
    print(f"| product (m x n x k) | {ours} | gemm crate (before) | PyTorch (MKL) |")
    print("| --- | --- | --- | --- |")
    for what in dict.fromkeys(g["what"] for g in gemm):
        by = {g["impl"]: g for g in gemm if g["what"] == what}
        g0 = by["chatforge"]
        print(f"| {what} ({g0['m']} x {g0['n']} x {g0['k']}) | " + " | ".join(f"{by[i]['gflops']:.0f}" for i in impls) + " |")
    json.dump({"cpu": CPU, "simd": SIMD, "threads": threads, "rows": gemm},
              open(f"{results}/cpu_gemm{SUFFIX}.json", "w"), indent=2)

    dec = decode_rows(work, "decode.jsonl", "llama.json")
    print(f"\nSmolLM2-135M: prompt processing (128 tokens) and generation (64 tokens), tokens/s, {threads} threads")
    decode_table(dec, True)
    long = decode_rows(work, "decode_long.jsonl", "llama_long.json")
    print(f"\nSmolLM2-135M: generation (64 tokens) after a 1024-token prompt, tokens/s, {threads} threads")
    decode_table(long, False)
    json.dump({"cpu": CPU, "simd": SIMD, "threads": threads, "rows": dec, "after_1024_token_prompt": long},
              open(f"{results}/cpu_decode{SUFFIX}.json", "w"), indent=2)


def decode_rows(work, ours, llama):
    """Rows of chatforge and transformers, and llama.cpp's from llama-bench's JSON."""
    dec = [json.loads(l) for l in open(f"{work}/{ours}")]
    for r in json.load(open(f"{work}/{llama}")):
        kind = "prompt_tokens_per_sec" if r["n_prompt"] else "decode_tokens_per_sec"
        ll = next((d for d in dec if d["impl"].startswith("llama.cpp")), None)
        if ll is None:
            ll = {"impl": f"llama.cpp ({r.get('build_commit', '')}, Q4_1 as stored)"}
            dec.append(ll)
        ll[kind] = statistics.median(r["samples_ts"])
    return dec


def decode_table(dec, prompts):
    hf = next(d for d in dec if d["impl"].startswith("transformers"))
    print("| implementation |" + (" prompt tok/s |" if prompts else "") + " generation tok/s | generation vs transformers |")
    print("| --- |" + (" --- |" if prompts else "") + " --- | --- |")
    for d in dec:
        pp = f" {d['prompt_tokens_per_sec']:,.1f} |" if prompts else ""
        print(f"| {d['impl']} |{pp} {d['decode_tokens_per_sec']:,.1f} "
              f"| {d['decode_tokens_per_sec'] / hf['decode_tokens_per_sec']:.2f}x |")


if __name__ == "__main__":
    main(*sys.argv[1:])
