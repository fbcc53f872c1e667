#!/usr/bin/env python3
"""Writes tests/fixtures/{gpt2,llama}-tiny-grpo-expected.safetensors: GRPO's advantages, loss,
mean KL, clipped share and the gradient of every trainable tensor for a fixed batch of sampled
replies on the tiny fixture models, full and LoRA, computed with TRL's formulas
(trl/trainer/grpo_trainer.py, `GRPOTrainer._compute_loss` and `_generate_and_score_completions`:
advantages (r - group mean) / (group std + 1e-4), torch's unbiased std; per-token ratio
exp(logp - old_logp), -min(ratio * A, clamp(ratio, 1 - eps, 1 + eps) * A) plus beta times
exp(ref - logp) - (ref - logp) - 1; `loss_type="dapo"`: the sum over reply tokens over their
number).

    bench/.venv-torch/bin/pip install torch transformers peft safetensors
    bench/.venv-torch/bin/python tools/make_grpo_fixtures.py

Needs the fixtures of tools/make_fixtures.py (the tiny models and their PEFT adapters).

The batch: 3 prompts x a group of 3 replies, right-padded (0 / -100), targets on the replies.
Cases, per model (policy and reference as in make_dpo_fixtures.py):
  full: every weight trainable; the reference is the model with its fixture adapter merged
  lora: the fixture adapter trainable; the reference is the model with the adapter disabled
Variants: "first" (the batch's first step: old = the policy itself, no KL penalty) and
"reused" (old log-probs = the policy's plus seeded noise, so some ratios leave the clip range;
KL weight 0.04).
Keys: input_ids / targets (9, T); rewards, advantages (9,); {case}.ref_logps and
{case}.old_logps (9, T, 0 off the replies); {case}.{variant}.loss, .kl, .clip_ratio (1,);
{case}.{variant}.grad.<name>.
"""
import os

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(HERE), "tests", "fixtures")
VOCAB = 128
GROUP = 3
EPS = 0.2
BETA = 0.04
PROMPTS = [4, 6, 3]
REPLIES = [[3, 5, 2], [4, 1, 6], [2, 2, 5]]
# The middle group's rewards are all equal: its advantages are 0.
REWARDS = [1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p, replies in zip(PROMPTS, REPLIES):
        prompt = torch.randint(2, VOCAB, (p,), generator=g)
        for n in replies:
            rows.append((prompt, torch.randint(2, VOCAB, (n,), generator=g)))
    width = max(len(p) + len(x) for p, x in rows) - 1
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, x) in enumerate(rows):
        full = torch.cat([p, x])
        ids[i, : len(full) - 1] = full[:-1]
        for j in range(len(full) - 1):
            if j + 1 >= len(p):
                targets[i, j] = full[j + 1]
    return ids, targets


def token_logps(model, ids, targets):
    logits = model(input_ids=ids).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)
    return picked * (targets != -100)


def advantages(rewards):
    r = rewards.view(-1, GROUP)
    mean = r.mean(1).repeat_interleave(GROUP)
    std = r.std(1).repeat_interleave(GROUP)
    return (rewards - mean) / (std + 1e-4)


def grpo_loss(logps, old, ref, adv, mask, beta):
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - EPS, 1 + EPS)
    per_token = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    if beta != 0.0:
        per_token = per_token + beta * kl
    n = mask.sum().clamp(min=1.0)
    loss = (per_token * mask).sum() / n
    low = (coef_1 < 1 - EPS) & (adv.unsqueeze(1) < 0)
    high = (coef_1 > 1 + EPS) & (adv.unsqueeze(1) > 0)
    clip = ((low | high) * mask).sum() / n
    return loss, (kl.detach() * mask).sum() / n, clip


def main():
    rewards = torch.tensor(REWARDS)
    adv = advantages(rewards)
    for seed, name in enumerate(["gpt2-tiny", "llama-tiny"]):
        ids, targets = batch(200 + seed)
        mask = (targets != -100).float()
        out = {"input_ids": ids, "targets": targets, "rewards": rewards, "advantages": adv}
        path = os.path.join(FIX, name)
        adapter = os.path.join(FIX, f"{name}-lora")
        for case in ["full", "lora"]:
            base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            if case == "full":
                ref = PeftModel.from_pretrained(
                    AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapter
                ).merge_and_unload().eval()
                with torch.no_grad():
                    ref_logps = token_logps(ref, ids, targets)
                policy = base
            else:
                policy = PeftModel.from_pretrained(base, adapter, is_trainable=True).eval()
                with torch.no_grad(), policy.disable_adapter():
                    ref_logps = token_logps(policy, ids, targets)
            with torch.no_grad():
                noise = torch.randn(ids.shape, generator=torch.Generator().manual_seed(7)) * 0.3
                old = (token_logps(policy, ids, targets) + noise) * mask
            out[f"{case}.ref_logps"] = ref_logps
            out[f"{case}.old_logps"] = old
            for variant in ["first", "reused"]:
                policy.zero_grad()
                logps = token_logps(policy, ids, targets)
                if variant == "first":
                    loss, kl, clip = grpo_loss(logps, logps.detach(), ref_logps, adv, mask, 0.0)
                else:
                    loss, kl, clip = grpo_loss(logps, old, ref_logps, adv, mask, BETA)
                loss.backward()
                key = f"{case}.{variant}"
                out[f"{key}.loss"] = loss.detach().reshape(1)
                out[f"{key}.kl"] = kl.reshape(1)
                out[f"{key}.clip_ratio"] = clip.reshape(1)
                for pname, p in policy.named_parameters():
                    if p.requires_grad:
                        clean = pname.replace(".default", "")
                        out[f"{key}.grad.{clean}"] = p.grad.detach().clone().contiguous()
                print(f"{name} {key}: loss {loss.item():.6f}, kl {kl.item():.5f}, clipped {clip.item():.3f}")
        dest = os.path.join(FIX, f"{name}-grpo-expected.safetensors")
        save_file({k: v.contiguous() for k, v in out.items()}, dest)
        print(f"{dest}: {os.path.getsize(dest)} bytes")


if __name__ == "__main__":
    main()
