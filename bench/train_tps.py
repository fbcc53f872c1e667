"""The median training tokens/s of a run's metrics.jsonl, the first two steps left out (warm-up):
shared by bench/ab.sh and bench/busy.sh.

    python3 bench/train_tps.py RUN/metrics.jsonl
"""
import json
import statistics
import sys

tps = [r["tokens_per_sec"] for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "train"][2:]
print(f"{statistics.median(tps):.1f}")
