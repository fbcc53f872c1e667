#!/usr/bin/env python3
"""PyTorch reference for bench/gpu.sh and bench/cpu.sh: a GPT-2 (nanoGPT's model: pre-LN, tanh-GELU,
tied embeddings, F.scaled_dot_product_attention; GPT-2 124M by default, vocabulary padded to a
multiple of 64 as chatforge pads it) trained with AdamW on the same llm.c token shard chatforge
reads, in fp32 and bf16 autocast, eager and torch.compile. Prints one JSON line per configuration:
median tokens/s over the steps after warm-up."""
import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab=50304, ctx=1024, d=768, layers=12, heads=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.h:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def shard_tokens(path):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(1024), dtype=np.int32)
        assert header[0] == 20240520, "not an llm.c u16 shard"
        return np.frombuffer(f.read(), dtype=np.uint16)[: header[2]]


def run(tokens, steps, batch, ctx, dtype, compiled, dev="cuda", shape=None, warm=3):
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    model = GPT(ctx=ctx, **(shape or {})).to(dev)
    params = [p for p in model.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=dev == "cuda")
    step_fn = torch.compile(model) if compiled else model
    rng = np.random.default_rng(0)
    times, losses = [], []
    t_first = time.time()
    for s in range(steps):
        starts = rng.integers(0, len(tokens) - ctx - 1, size=batch)
        w = torch.from_numpy(np.stack([tokens[i:i + ctx + 1].astype(np.int64) for i in starts])).to(dev)
        sync()
        t0 = time.time()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = step_fn(w[:, :-1], w[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.time() - t0)
        losses.append(loss.item())
    tps = statistics.median(batch * ctx / t for t in times[warm:])
    return {"impl": "pytorch " + ("compile" if compiled else "eager"), "dtype": dtype, "tokens_per_sec": tps,
            "first_step_s": times[0], "total_s": time.time() - t_first, "loss_first": losses[0], "loss_last": losses[-1],
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--configs", default="eager:f32,eager:bf16,compile:f32,compile:bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--vocab", type=int, default=50257, help="padded to a multiple of 64")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    shape = {"vocab": (a.vocab + 63) // 64 * 64, "layers": a.layers, "heads": a.heads, "d": a.dim}
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as in chatforge
    torch.backends.cudnn.allow_tf32 = False
    tokens = shard_tokens(a.shard)
    for c in a.configs.split(","):
        mode, dtype = c.split(":")
        r = run(tokens, a.steps, a.batch, a.context, dtype, mode == "compile", a.device, shape, a.warmup)
        r["threads"] = torch.get_num_threads()
        print(json.dumps(r), flush=True)
        if a.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
