#!/usr/bin/env python3
"""Writes tests/fixtures/{gpt2,llama}-tiny-dpo-expected.safetensors: the DPO and IPO losses, the four
reward metrics and the two log-probability metrics, and the gradient of every trainable tensor, for
three preference pairs on the tiny fixture models, full and LoRA, computed with TRL's formulas
(trl/trainer/dpo_trainer.py, `DPOTrainer._compute_loss`, TRL 1.16: summed completion log-probs,
log-ratios to the reference, `-logsigmoid(beta * delta)` or, for IPO, per-token log-ratios and
`(delta - 1 / (2 beta))**2`, the mean over pairs; rewards `beta * logratio`, accuracies
`chosen_rewards > rejected_rewards`).

    bench/.venv-torch/bin/pip install torch transformers peft safetensors trl
    bench/.venv-torch/bin/python tools/make_dpo_fixtures.py

Needs the fixtures of tools/make_fixtures.py (the tiny models and their PEFT adapters).

Cases, per model:
  full: the policy is the model itself (every weight trainable); the reference is the model with
        its fixture adapter merged in (another model, so that the log-ratios are not zero)
  lora: the policy is the model with its fixture adapter (only the adapter trainable); the
        reference is the model with the adapter disabled, as TRL does for PEFT models
Keys: input_ids / targets (2B, T): the B chosen rows, then the B rejected ones, right-padded (0 /
-100); {case}.ref_logps (2B,); {case}.{loss}.loss (1,), .metrics (6,: rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected), .grad.<name>.
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
BETA = 0.1
# (prompt, chosen reply, rejected reply) lengths in tokens.
SHAPES = [(5, 4, 6), (3, 7, 2), (8, 3, 3)]


def pairs(seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p, c, r in SHAPES:
        prompt = torch.randint(2, VOCAB, (p,), generator=g)
        for n in (c, r):
            rows.append((prompt, torch.randint(2, VOCAB, (n,), generator=g)))
    # Chosen rows first, then the rejected ones.
    rows = rows[0::2] + rows[1::2]
    width = max(len(p) + len(x) for p, x in rows) - 1
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, x) in enumerate(rows):
        full = torch.cat([p, x])
        ids[i, : len(full) - 1] = full[:-1]
        # Position j predicts token j + 1, a reply token from index len(p) on.
        for j in range(len(full) - 1):
            if j + 1 >= len(p):
                targets[i, j] = full[j + 1]
    return ids, targets


def sequence_logps(model, ids, targets):
    logits = model(input_ids=ids).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    keep = targets != -100
    picked = logp.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (picked * keep).sum(1)


def dpo(policy_logps, ref_logps, lengths, loss_type):
    b = policy_logps.shape[0] // 2
    chosen, rejected = policy_logps[:b], policy_logps[b:]
    chosen_lr = chosen - ref_logps[:b]
    rejected_lr = rejected - ref_logps[b:]
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(BETA * (chosen_lr - rejected_lr))
    else:
        delta = chosen_lr / lengths[:b].clamp(min=1.0) - rejected_lr / lengths[b:].clamp(min=1.0)
        losses = (delta - 1 / (2 * BETA)) ** 2
    cr, rr = BETA * chosen_lr.detach(), BETA * rejected_lr.detach()
    metrics = torch.stack([cr.mean(), rr.mean(), (cr > rr).float().mean(), (cr - rr).mean(),
                           chosen.detach().mean(), rejected.detach().mean()])
    return losses.mean(), metrics


def main():
    for seed, name in enumerate(["gpt2-tiny", "llama-tiny"]):
        ids, targets = pairs(100 + seed)
        lengths = (targets != -100).sum(1).float()
        out = {"input_ids": ids, "targets": targets}
        path = os.path.join(FIX, name)
        adapter = os.path.join(FIX, f"{name}-lora")
        for case in ["full", "lora"]:
            base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            if case == "full":
                ref = PeftModel.from_pretrained(
                    AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapter
                ).merge_and_unload().eval()
                with torch.no_grad():
                    ref_logps = sequence_logps(ref, ids, targets)
                policy = base
            else:
                policy = PeftModel.from_pretrained(base, adapter, is_trainable=True).eval()
                with torch.no_grad(), policy.disable_adapter():
                    ref_logps = sequence_logps(policy, ids, targets)
            out[f"{case}.ref_logps"] = ref_logps
            for loss_type in ["sigmoid", "ipo"]:
                policy.zero_grad()
                loss, metrics = dpo(sequence_logps(policy, ids, targets), ref_logps, lengths, loss_type)
                loss.backward()
                key = f"{case}.{loss_type}"
                out[f"{key}.loss"] = loss.detach().reshape(1)
                out[f"{key}.metrics"] = metrics
                for pname, p in policy.named_parameters():
                    if p.requires_grad:
                        # PEFT's names without the adapter's (as in its saved files).
                        clean = pname.replace(".default", "")
                        out[f"{key}.grad.{clean}"] = p.grad.detach().clone().contiguous()
                print(f"{name} {key}: loss {loss.item():.6f}, metrics {[round(x, 4) for x in metrics.tolist()]}")
        dest = os.path.join(FIX, f"{name}-dpo-expected.safetensors")
        save_file({k: v.contiguous() for k, v in out.items()}, dest)
        print(f"{dest}: {os.path.getsize(dest)} bytes")


if __name__ == "__main__":
    main()
