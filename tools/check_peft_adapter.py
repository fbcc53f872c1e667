#!/usr/bin/env python3
"""Checks that PEFT loads an adapter chatforge wrote and computes what chatforge's merged model
computes.

    chatforge convert --input BASE(.gguf or dir) --output /tmp/base-hf
    .venv/bin/python tools/check_peft_adapter.py RUN/adapter /tmp/base-hf RUN/model
"""
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(adapter, base_dir, merged_dir):
    tok = AutoTokenizer.from_pretrained(merged_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = peft(input_ids=ids).logits, merged(input_ids=ids).logits
        out = peft.generate(ids, max_new_tokens=24, do_sample=False)
    diff = (a - b).abs().max().item()
    print(f"PEFT(base + chatforge adapter) vs chatforge merged model: max |logit diff| {diff:.2e}")
    print("PEFT greedy reply:", tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert diff < 1e-3, diff


if __name__ == "__main__":
    main(*sys.argv[1:])
