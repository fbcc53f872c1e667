#!/usr/bin/env bash
# Tokenization speed, chatforge against tiktoken in one run, on GPT-2's tokenizer (built from
# ../shared/data's encoder.json + vocab.bpe by both) and the same text files:
#   - chatforge: the whole `data prepare` command (load the tokenizer, read, tokenize, write the
#     shards), best of RUNS, with 1 and THREADS threads; and the MB/s the command prints itself
#     (everything after loading the tokenizer);
#   - tiktoken: its encoder in-process (bench/cpu/tiktoken_speed.py), 1 thread on the whole text and
#     THREADS threads over the same 64 KiB pieces; loading its ranks and the file is not timed.
# Prints the CPU and SIMD flags; writes bench/results/cpu_tokenize.json.
#
#   bash bench/tokenize.sh [BINARY]      # default target/release/chatforge; RUNS=3 THREADS=2
#
# First use creates bench/.venv-tiktoken (tiktoken from PyPI; small).
set -euo pipefail
cd "$(dirname "$0")/.."
CF=$(realpath "${1:-target/release/chatforge}")
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
RESULTS=${RESULTS:-bench/results}
DATA=../shared/data
FILES=${FILES:-"shakespeare_complete.txt kjv_bible.txt corpus_x4.txt"}
[ -x bench/.venv-tiktoken/bin/python ] || {
  python3 -m venv bench/.venv-tiktoken
  bench/.venv-tiktoken/bin/pip install -q tiktoken
}
PY=bench/.venv-tiktoken/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
unset RAYON_NUM_THREADS CHATFORGE_THREADS

simd=$(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') | SIMD: ${simd:-none}"
echo "== CPU: $cpu | $(nproc) cores"
# A larger file, so that the fixed costs (loading GPT-2's tokenizer: ~0.25 s) weigh less: the
# shared books four times over (~42 MB).
for _ in 1 2 3 4; do cat $DATA/shakespeare_complete.txt $DATA/kjv_bible.txt $DATA/tinyshakespeare.txt; done >"$WORK/corpus_x4.txt"
path() { if [ -f "$DATA/$1" ]; then echo "$DATA/$1"; else echo "$WORK/$1"; fi; }
"$CF" tokenizer import-gpt2 --vocab $DATA/gpt2_encoder.json --merges $DATA/gpt2_vocab.bpe --out "$WORK/gpt2" >/dev/null 2>&1

for f in $FILES; do
  for t in 1 "$THREADS"; do
    best=""
    for run in $(seq "$RUNS"); do
      out="$WORK/out-$t-$run"
      t0=$(date +%s.%N)
      "$CF" --threads "$t" data prepare --tokenizer "$WORK/gpt2" --input "$(path "$f")" --out "$out" >/dev/null 2>"$WORK/err"
      t1=$(date +%s.%N)
      s=$(python3 -c "print($t1 - $t0)")
      best=$(python3 -c "print(min(x for x in [$s, ${best:-$s}]))")
      tokens=$(python3 -c "import json; m = json.load(open('$out/meta.json')); print(m['train_tokens'] + m['val_tokens'] - 1)")
      # The command's own figure: reading, tokenizing and writing, without loading the tokenizer.
      own=$(grep -o '[0-9.]* MB/s' "$WORK/err" | cut -d' ' -f1)
      rm -rf "$out"
    done
    mb=$(python3 -c "import os; print(os.path.getsize('$(path "$f")') / 1e6)")
    python3 -c "import json; print(json.dumps({'impl': 'chatforge data prepare (whole command)', 'threads': $t, 'file': '$f', 'mb': round($mb, 3), 'tokens': $tokens, 'seconds': round($best, 4), 'mb_per_s': round($mb / $best, 2), 'after_loading_mb_per_s': $own}))" >>"$WORK/tok.jsonl"
  done
  "$PY" bench/cpu/tiktoken_speed.py "$DATA" "$(path "$f")" "$THREADS" "$RUNS" >>"$WORK/tok.jsonl"
done

mkdir -p "$RESULTS"
python3 - "$WORK/tok.jsonl" "$RESULTS/cpu_tokenize.json" "$cpu" "$THREADS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu, threads = sys.argv[3], sys.argv[4]
json.dump({"cpu": cpu, "rows": rows}, open(sys.argv[2], "w"), indent=1)
print("\n| file | what | threads | tokens | s | MB/s | × tiktoken (same threads) | MB/s after loading |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    ref = [x for x in rows if x["file"] == r["file"] and x["threads"] == r["threads"] and x["impl"].startswith("tiktoken")]
    ratio = "" if r["impl"].startswith("tiktoken") or not ref else f"{r['mb_per_s'] / ref[0]['mb_per_s']:.2f}×"
    print(f"| {r['file']} | {r['impl']} | {r['threads']} | {r['tokens']:,} | {r['seconds']} | {r['mb_per_s']} | {ratio} | {r.get('after_loading_mb_per_s', '')} |")
print(f"\nCPU: {cpu}; THREADS={threads}")
PY
