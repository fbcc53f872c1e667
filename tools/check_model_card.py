#!/usr/bin/env python3
"""Checks a chatforge run's model cards with huggingface_hub's own parser, and that PEFT opens the
adapter by itself (the base from adapter_config.json's base_model_name_or_path, nothing passed
by hand) and computes what chatforge's merged model computes.

    chatforge sft --model BASE(.gguf or dir) --data chat.jsonl --out RUN --lora-rank 8 --merge
    bench/.venv-torch/bin/python tools/check_model_card.py RUN
"""
import json
import sys
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM


def check_card(d):
    card = ModelCard.load(d / "README.md")
    data = card.data.to_dict()
    for key in ("license", "library_name", "tags", "pipeline_tag"):
        assert key in data, f"{d}: no {key}"
    results = card.data.eval_results or []
    print(f"{d}/README.md: library {data['library_name']}, license {data['license']}, "
          f"base_model {data.get('base_model')}, {len(results)} eval results")
    for r in results:
        print(f"    {r.dataset_name}: {r.metric_name} = {r.metric_value}")
    return results


def main(run):
    run = Path(run)
    check_card(run / "model")
    adapter = run / "adapter"
    if not adapter.exists():
        return
    check_card(adapter)
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    print("adapter_config.json names the base", base)
    peft = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32).eval()
    ids = torch.arange(1, 33).reshape(1, 32)
    with torch.no_grad():
        ours = merged(input_ids=ids).logits
        diff = (peft(input_ids=ids).logits - ours).abs().max().item()
        theirs = peft.merge_and_unload()(input_ids=ids).logits
        merge_diff = (theirs - ours).abs().max().item()
    scale = ours.abs().max().item()
    print(f"AutoPeftModelForCausalLM(adapter) vs chatforge's merged model: max |logit diff| {diff:.2e} "
          f"(largest |logit| {scale:.1f}); PEFT's own merge vs chatforge's: {merge_diff:.2e}")
    assert diff < 1e-4 * scale, diff


if __name__ == "__main__":
    main(*sys.argv[1:])
