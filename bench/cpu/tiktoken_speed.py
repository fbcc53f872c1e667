"""tiktoken's GPT-2 encoder on a text file, timed in-process: one thread (encode_ordinary on the
whole text) and N threads (encode_ordinary_batch over 64 KiB pieces cut at newlines, as chatforge's
`data prepare` cuts a document). GPT-2's ranks come from ../shared/data's encoder.json + vocab.bpe,
as tools/make_fixtures.py builds them. Prints one JSON line per run."""
import json, os, platform, sys, time

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

data, path, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(data, "gpt2_vocab.bpe"),
                                        os.path.join(data, "gpt2_encoder.json"))
enc = tiktoken.Encoding("gpt2", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                        mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
text = open(path, encoding="utf-8").read()
pieces, rest = [], text
while rest:
    cut = len(rest) if len(rest) <= 65536 else rest.find("\n", 65536) + 1 or len(rest)
    pieces.append(rest[:cut])
    rest = rest[cut:]
mb = len(text.encode("utf-8")) / 1e6
for name, n, fn in [("tiktoken encode_ordinary", 1, lambda: [enc.encode_ordinary(text)]),
                    ("tiktoken encode_ordinary_batch", threads,
                     lambda: enc.encode_ordinary_batch(pieces, num_threads=threads))]:
    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    print(json.dumps({"impl": name, "threads": n, "file": os.path.basename(path), "mb": round(mb, 3),
                      "tokens": sum(map(len, out)), "seconds": round(best, 4),
                      "mb_per_s": round(mb / best, 2), "tiktoken": tiktoken.__version__,
                      "python": platform.python_version()}))
