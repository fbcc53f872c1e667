#!/usr/bin/env python3
"""N concurrent streaming chat requests against a running `chatforge serve`; reports how many
completed, total generated tokens/s and time-to-first-token percentiles, and writes them as JSON.

    python bench/load_check.py --base-url http://127.0.0.1:8000/v1 --model tiny --n 100
"""
import argparse
import asyncio
import json
import os
import statistics
import time

from openai import AsyncOpenAI


async def one(client, model, i, max_tokens):
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Tell me a story, number {i}."}],
        max_tokens=max_tokens, temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content and ttft is None:
            ttft = time.perf_counter() - t0
    return ttft if ttft is not None else time.perf_counter() - t0, tokens, time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "load_check.json"))
    a = ap.parse_args()
    client = AsyncOpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=600)
    t0 = time.perf_counter()
    results = await asyncio.gather(*[one(client, a.model, i, a.max_tokens) for i in range(a.n)], return_exceptions=True)
    wall = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [repr(r) for r in results if isinstance(r, BaseException)]
    ttfts = [r[0] for r in ok]
    tokens = sum(r[1] for r in ok)
    report = {
        "requests": a.n, "completed": len(ok), "failed": len(failed), "max_tokens": a.max_tokens,
        "wall_s": round(wall, 3), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(pct(ttfts, 50), 3) if ttfts else None,
        "ttft_p99_s": round(pct(ttfts, 99), 3) if ttfts else None,
        "latency_mean_s": round(statistics.mean(r[2] for r in ok), 3) if ok else None,
        "errors": failed[:5],
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"| requests | completed | failed | tokens | wall s | tokens/s | TTFT p50 s | TTFT p99 s |")
    print(f"| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {a.n} | {len(ok)} | {len(failed)} | {tokens} | {wall:.2f} | {tokens / wall:.1f} | {report['ttft_p50_s']} | {report['ttft_p99_s']} |")
    print(f"written to {a.out}")
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0]}")


asyncio.run(main())
