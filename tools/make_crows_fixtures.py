#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2_crows_pairs.json: CrowS-Pairs scored by lm-evaluation-harness
itself on SmolLM2-135M-Instruct (the GGUF in ../shared/data, dequantised by transformers):
each sentence's log-likelihood through the harness's `HFLM.loglikelihood` with an empty context
(the harness then scores the sentence after the tokenizer's BOS token, else EOS), and the
metrics through its `crows_pairs` task's own `process_results` (`likelihood_diff`,
`pct_stereotype`), averaged as its `mean` aggregation does, overall and by bias type.

    bench/.venv-torch/bin/pip install torch transformers gguf lm_eval
    bench/.venv-torch/bin/python tools/make_crows_fixtures.py [--pairs 40] [--summary 1508]

The harness's `crows_pairs_english` reads BigScienceBiasEval/crows_pairs_multilingual from the Hub;
this reads the original CSV of ../shared/data (nyu-mll/crows-pairs), sent_more as the harness's
first choice and sent_less as its second, as its doc_to_choice orders them.

Keys: pairs: [{more, less, bias_type, lls: [more, less]}] for the first --pairs rows; overall and
by_type ({items, pct_stereotype, likelihood_diff}) over them; and with --summary N the same over
the first N rows under "first_N" (for the README's figure; 1508 is the whole file).
"""
import argparse
import csv
import json
import os
from collections import defaultdict

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks.crows_pairs.utils import process_results
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(HERE), "tests", "fixtures")
DATA = os.path.join(os.path.dirname(HERE), "..", "shared", "data")
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def rows(limit):
    with open(os.path.join(DATA, "crows_pairs_anonymized.csv"), encoding="utf-8", newline="") as f:
        out = []
        for r in csv.DictReader(f):
            if len(out) == limit:
                break
            out.append({"more": r["sent_more"].strip(), "less": r["sent_less"].strip(), "bias_type": r["bias_type"].strip()})
        return out


def score(lm, pairs):
    reqs = []
    for i, p in enumerate(pairs):
        for j, s in enumerate([p["more"], p["less"]]):
            reqs.append(Instance(request_type="loglikelihood", doc=p, arguments=("", s), idx=j, metadata=("crows_pairs", i, 1)))
    res = lm.loglikelihood(reqs)
    for i, p in enumerate(pairs):
        p["lls"] = [res[2 * i][0], res[2 * i + 1][0]]
    return pairs


def metrics(pairs):
    def mean(rs):
        return {
            "items": len(rs),
            "pct_stereotype": sum(r["pct_stereotype"] for r in rs) / len(rs),
            "likelihood_diff": sum(r["likelihood_diff"] for r in rs) / len(rs),
        }

    results = [(p["bias_type"], process_results(p, [(p["lls"][0], False), (p["lls"][1], False)])) for p in pairs]
    by_type = defaultdict(list)
    for t, r in results:
        by_type[t].append(r)
    return {"overall": mean([r for _, r in results]), "by_type": {t: mean(rs) for t, rs in sorted(by_type.items())}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--summary", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(DATA, gguf_file=SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(DATA, gguf_file=SMOLLM2, dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    print("prefix token", lm.prefix_token_id, repr(tok.convert_ids_to_tokens(lm.prefix_token_id)))
    pairs = score(lm, rows(a.pairs))
    fixture = {"prefix_token_id": lm.prefix_token_id, "pairs": pairs, **metrics(pairs)}
    if a.summary:
        fixture[f"first_{a.summary}"] = metrics(score(lm, rows(a.summary)))
        print(json.dumps(fixture[f"first_{a.summary}"], indent=1))
    with open(os.path.join(FIX, "smollm2_crows_pairs.json"), "w") as f:
        json.dump(fixture, f, indent=1)
    print(json.dumps(fixture["overall"]))


if __name__ == "__main__":
    main()
