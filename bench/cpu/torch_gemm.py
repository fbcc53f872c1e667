#!/usr/bin/env python3
"""PyTorch's matmul (MKL) on the shapes of examples/gemm_gflops.rs, medians of 7; JSON lines."""
import json
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
# (m, n, k, what, A transposed, B transposed): the model's layouts (forward is x @ w.T).
shapes = [(2048, 1152, 384, "qkv forward", False, True),
          (2048, 1536, 384, "mlp fc forward", False, True),
          (2048, 8192, 384, "lm_head forward", False, True),
          (2048, 384, 8192, "lm_head dx", False, False),
          (8192, 384, 2048, "lm_head dw", True, False), (1536, 384, 2048, "mlp fc dw", True, False)]
for m, n, k, name, ta, tb in shapes:
    a = torch.randn(k, m).t() if ta else torch.randn(m, k)
    b = torch.randn(n, k).t() if tb else torch.randn(k, n)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"impl": "pytorch", "what": name, "m": m, "n": n, "k": k,
                      "gflops": round(2 * m * n * k / times[3] / 1e9, 1)}))
