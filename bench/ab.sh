#!/usr/bin/env bash
# Two chatforge binaries against each other, interleaved (A B A B ...) so that a drift of the
# machine falls on both: training tokens/s on the reference model (vocab 8192, 6 layers, 6 heads,
# width 384, context 256, batch 8, tiny Shakespeare; the median of the steps after the first two)
# and SmolLM2-135M Q4_1 prompt processing (128 tokens) and decoding (64 tokens) with
# `chatforge bench`. Prints each figure's median over the rounds and the ratio B / A.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY        # ROUNDS=3 STEPS=12 THREADS=2 by default
#
# For refactors that should not change speed: a ratio within the rounds' spread is noise.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1")
B=$(realpath "$2")
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-12}
THREADS=${THREADS:-2}
DATA=../shared/data
SMOL=$DATA/SmolLM2-135M-Instruct.Q4_1.gguf
export RAYON_NUM_THREADS=$THREADS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

simd=$(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "== CPU:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) | SIMD: ${simd:-none} | $THREADS threads"
"$A" tokenizer train --input $DATA/tinyshakespeare.txt --vocab-size 8192 --out "$WORK/tok" >/dev/null
"$A" data prepare --tokenizer "$WORK/tok" --input $DATA/tinyshakespeare.txt --out "$WORK/data" >/dev/null 2>&1

train() { # binary out -> median tokens/s of the steps after the first two
  "$1" pretrain --out "$2" --set data.dir="$WORK/data" --set model.preset=tiny \
    --set model.n_layer=6 --set model.n_head=6 --set model.n_embd=384 \
    --set train.context=256 --set train.batch_size=8 --set train.max_steps="$STEPS" \
    --set train.warmup_steps=2 --set train.log_every=1 --set eval.every=0 --set eval.tokens=4096 \
    --set eval.sample_every=0 --set eval.sample_tokens=4 --set checkpoint.every=0 >/dev/null 2>&1
  python3 bench/train_tps.py "$2/metrics.jsonl"
}

decode() { # binary -> "pp tg" tokens/s
  "$1" bench --model "$SMOL" --runs 5 --json | python3 -c \
    'import json,sys; r=json.load(sys.stdin); print(r["prompt_tokens_per_sec"], r["decode_tokens_per_sec"])'
}

: >"$WORK/results"
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A
    [ $side = B ] && bin=$B
    t=$(train "$bin" "$WORK/run-$side-$round")
    read -r pp tg < <(decode "$bin")
    echo "round $round $side: training $t tok/s | SmolLM2 pp128 $pp tok/s, tg64 $tg tok/s"
    echo "$side $t $pp $tg" >>"$WORK/results"
  done
done
python3 - "$WORK/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
col = lambda side, i: [float(r[i]) for r in rows if r[0] == side]
print("| figure | A (median, range) | B (median, range) | B / A |")
print("| --- | --- | --- | --- |")
for name, i in [("training, reference model (tok/s)", 1), ("SmolLM2 prompt, 128 tokens (tok/s)", 2), ("SmolLM2 decoding, 64 tokens (tok/s)", 3)]:
    a, b = col("A", i), col("B", i)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {ma:.1f} ({min(a):.1f}-{max(a):.1f}) | {mb:.1f} ({min(b):.1f}-{max(b):.1f}) | {mb / ma:.3f} |")
EOF
