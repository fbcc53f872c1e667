#!/usr/bin/env bash
# Peak resident memory on SmolLM2-135M Q4_1 (a 98 MB GGUF), chatforge against llama.cpp on the same
# file: `generate` (a short prompt, 64 new tokens) beside llama-bench decoding 64 tokens; `serve`
# idle after loading and after 32 concurrent streaming requests of 64 tokens; `eval` (HellaSwag,
# 20 items) with the quantized weights (`--weights auto`) and with f32 (its default). Peak RSS is
# /usr/bin/time -v's "Maximum resident set size", or the server's VmHWM from /proc. The goal
# (issue 18): the quantized path within 1.5x the file size plus its KV cache.
#
#   bash bench/rss.sh [BINARY]        # default target/release/chatforge; PORT=18431
set -euo pipefail
cd "$(dirname "$0")/.."
CF=$(realpath "${1:-target/release/chatforge}")
PORT=${PORT:-18431}
DATA=../shared/data
SMOL=$DATA/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA=bench/.llama/build/bin/llama-bench
WORK=$(mktemp -d)
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT
unset RAYON_NUM_THREADS CHATFORGE_THREADS

simd=$(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
family=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
model=$(grep -m1 '^model\s*:' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
echo "== CPU:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) (family $family model $model) | SIMD: ${simd:-none} | $(nproc) cores"
file_mb=$(python3 -c "import os; print('%.1f' % (os.path.getsize('$SMOL') / 1e6))")
echo "== file: $SMOL, $file_mb MB"
# SmolLM2-135M's KV cache per position: 30 layers x 3 KV heads x 64 x (key + value) x 4 bytes.
# Buffers double when full (model::kv_cache): generate's 70 positions sit in 128; a served chat
# of 36 prompt tokens + 64 in 144 per stream.
echo "== KV cache: 46.1 KB per position; generate holds 128 (5.9 MB), serve 32 x 144 (212 MB)"
echo "== goal, 1.5 x (file + KV): generate $(python3 -c "print('%.1f' % (1.5 * ($file_mb + 5.9)))") MB," \
  "serve idle $(python3 -c "print('%.1f' % (1.5 * $file_mb))") MB, after 32 streams $(python3 -c "print('%.1f' % (1.5 * ($file_mb + 212)))") MB"

peak_mb() { # command... -> peak RSS in MB (the command's output is discarded)
  /usr/bin/time -v "$@" >/dev/null 2>"$WORK/time" || { tail -5 "$WORK/time" >&2; return 1; }
  awk '/Maximum resident set size/ { printf "%.1f", $NF / 1000 }' "$WORK/time"
}
hwm_mb() { awk '/VmHWM/ { printf "%.1f", $2 / 1000 }' "/proc/$1/status"; }
row() { printf '| %-44s | %8s MB | %6s |\n' "$1" "$2" "$(python3 -c "print('%.2fx' % ($2 / $file_mb))")"; }

echo
echo "| what | peak RSS | / file |"
echo "| --- | --- | --- |"
row "chatforge generate, 64 tokens" "$(peak_mb "$CF" generate --model "$SMOL" --prompt 'The capital of France is' --max-tokens 64)"
if [ -x "$LLAMA" ]; then
  row "llama.cpp llama-bench, 64 tokens" "$(peak_mb "$LLAMA" -m "$SMOL" -p 0 -n 64 -r 1 -t "$(nproc)")"
else
  echo "| llama.cpp: not built (bash bench/build_llama.sh) | | |"
fi

"$CF" serve --model "$SMOL" --model-name m --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { cat "$WORK/serve.log"; exit 1; }
row "chatforge serve, idle after loading" "$(hwm_mb "$SERVER")"
body='{"model":"m","stream":true,"max_tokens":64,"temperature":0,"messages":[{"role":"user","content":"Tell me about the sea."}]}'
pids=()
for i in $(seq 1 32); do
  curl -sN "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "$body" >"$WORK/stream-$i" &
  pids+=($!)
done
wait "${pids[@]}"
grep -q '\[DONE\]' "$WORK/stream-1" || { echo "a stream did not finish: $(head -c 300 "$WORK/stream-1")"; exit 1; }
row "chatforge serve, after 32 streams" "$(hwm_mb "$SERVER")"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""

row "chatforge eval hellaswag 20, --weights auto" \
  "$(peak_mb "$CF" eval --model "$SMOL" --task hellaswag --data $DATA/hellaswag_val.jsonl --limit 20 --weights auto)"
row "chatforge eval hellaswag 20, --weights f32" \
  "$(peak_mb "$CF" eval --model "$SMOL" --task hellaswag --data $DATA/hellaswag_val.jsonl --limit 20)"
