#!/usr/bin/env bash
# chatforge when the cores are shared: decoding (`chatforge bench`: prompt 128 then 64 tokens on
# SmolLM2-135M Q4_1, 64 then 32 on the tiny GPT-2 fixture of context 128), and training tokens/s on the `tiny` preset, each
# with 1 and 2 threads, first on a quiet machine, then beside one CPU-bound process per core
# (`yes > /dev/null`, started and ended by this script). With llama.cpp's llama-bench built by
# bench/cpu.sh (bench/.llama), it runs under the same conditions. The goal: with the cores shared,
# 2 threads never slower than 1.
#
#   bash bench/busy.sh [BINARY]        # default target/release/chatforge; RUNS=3 STEPS=12
set -euo pipefail
cd "$(dirname "$0")/.."
CF=$(realpath "${1:-target/release/chatforge}")
RUNS=${RUNS:-3}
STEPS=${STEPS:-12}
DATA=../shared/data
SMOL=$DATA/SmolLM2-135M-Instruct.Q4_1.gguf
TINY=tests/fixtures/gpt2-tiny-eval
LLAMA=bench/.llama/build/bin/llama-bench
WORK=$(mktemp -d)
HOGS=()
stop_hogs() { for p in "${HOGS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; HOGS=(); }
trap 'stop_hogs; rm -rf "$WORK"' EXIT
unset RAYON_NUM_THREADS CHATFORGE_THREADS

simd=$(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "== CPU:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) | SIMD: ${simd:-none} | $(nproc) cores"
"$CF" tokenizer train --input $DATA/tinyshakespeare.txt --vocab-size 2048 --out "$WORK/tok" >/dev/null
"$CF" data prepare --tokenizer "$WORK/tok" --input $DATA/tinyshakespeare.txt --out "$WORK/data" >/dev/null 2>&1

decode() { # model threads [bench args] -> "pp tg"
  "$CF" --threads "$2" bench --model "$1" --runs "$RUNS" --json "${@:3}" | python3 -c \
    'import json,sys; r=json.load(sys.stdin); print("%.1f %.1f" % (r["prompt_tokens_per_sec"], r["decode_tokens_per_sec"]))'
}
train() { # threads -> median tokens/s after the first two steps
  local out="$WORK/train-$1-$RANDOM"
  "$CF" --threads "$1" pretrain --out "$out" --set data.dir="$WORK/data" --set model.preset=tiny \
    --set train.max_steps="$STEPS" --set train.warmup_steps=2 --set train.log_every=1 \
    --set eval.every=0 --set eval.tokens=4096 --set eval.sample_every=0 --set eval.sample_tokens=4 \
    --set checkpoint.every=0 >/dev/null 2>&1
  python3 bench/train_tps.py "$out/metrics.jsonl"
}
llama() { # threads -> "pp tg", or "- -" without llama-bench
  if [ ! -x $LLAMA ]; then echo "- -"; return; fi
  $LLAMA -m $SMOL -t "$1" -p 128 -n 64 -r "$RUNS" -o json 2>/dev/null | python3 -c \
    'import json,sys; r=json.load(sys.stdin); d={("pp" if x["n_gen"]==0 else "tg"): x["avg_ts"] for x in r}; print("%.1f %.1f" % (d["pp"], d["tg"]))'
}

echo "| load | threads | SmolLM2 pp128 | SmolLM2 tg64 | tiny GPT-2 pp64 | tiny GPT-2 tg32 | training tiny (tok/s) | llama.cpp SmolLM2 pp128 | llama.cpp tg64 |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for load in quiet busy; do
  if [ $load = busy ]; then
    for _ in $(seq "$(nproc)"); do yes >/dev/null & HOGS+=($!); done
    sleep 1
  fi
  for t in 1 2; do
    read -r spp stg < <(decode "$SMOL" "$t")
    read -r tpp ttg < <(decode "$TINY" "$t" --prompt-tokens 64 --new-tokens 32)
    tr=$(train "$t")
    read -r lpp ltg < <(llama "$t")
    echo "| $load | $t | $spp | $stg | $tpp | $ttg | $tr | $lpp | $ltg |"
  done
  stop_hogs
done
