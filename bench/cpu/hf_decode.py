#!/usr/bin/env python3
"""transformers reference for bench/cpu.sh: prompt processing and greedy generation speed of an HF
model directory (SmolLM2 as chatforge converts it from the GGUF file, i.e. the same dequantised
weights), measured as `chatforge bench` measures it: the same synthetic prompt (token i is
(7919 i + 13) mod V), one warm-up, medians of the timed runs. Prints one JSON line."""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(7919 * i + 13) % vocab for i in range(a.prompt_tokens)]])
    pp, tg = [], []
    with torch.inference_mode():
        for run in range(a.runs + 1):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            t1 = time.perf_counter()
            past, logits = out.past_key_values, out.logits[:, -1]
            for _ in range(a.new_tokens):
                nxt = logits.argmax(-1, keepdim=True)
                out = model(nxt, past_key_values=past, use_cache=True)
                past, logits = out.past_key_values, out.logits[:, -1]
            t2 = time.perf_counter()
            if run > 0:
                pp.append(a.prompt_tokens / (t1 - t0))
                tg.append(a.new_tokens / (t2 - t1))
    print(json.dumps({"impl": "transformers (PyTorch eager, f32)", "prompt_tokens": a.prompt_tokens,
                      "new_tokens": a.new_tokens, "prompt_tokens_per_sec": statistics.median(pp),
                      "decode_tokens_per_sec": statistics.median(tg), "prompt_runs": pp, "decode_runs": tg,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
