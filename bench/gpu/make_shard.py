#!/usr/bin/env python3
"""Writes an llm.c-format u16 token shard of uniform random GPT-2 ids (train and val) for
bench/gpu.sh: throughput does not depend on what the tokens say."""
import os
import sys

import numpy as np

out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4_000_000
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
for name, count in [("bench_train_000000.bin", n), ("bench_val_000000.bin", 65_536)]:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, count]
    with open(os.path.join(out, name), "wb") as f:
        f.write(header.tobytes())
        f.write(rng.integers(0, 50257, size=count, dtype=np.uint16).tobytes())
