#!/usr/bin/env bash
# CPU benchmark, chatforge against the reference implementations in one run, all given the same
# threads (THREADS, default 2):
#
#   1. training tokens/s: chatforge `pretrain` vs bench/torch_gpt2.py (the identical GPT-2 in
#      PyTorch, AdamW), on the reference model (vocab 8192, 6 layers, 6 heads, width 384, context
#      256, batch 8, tiny Shakespeare) and on the GPT-2 124M shape at context 128, batch 4;
#   2. GEMM GFLOP/s on that model's matrix products: chatforge's AVX-512 kernel, the `gemm` crate
#      it replaced (CHATFORGE_NO_AVX512=1), PyTorch (MKL);
#   3. SmolLM2-135M (../shared/data, Q4_1 GGUF): prompt processing (128 tokens) and generation
#      (64 tokens) with `chatforge bench` (auto: the file's own 4-bit blocks and 8-bit output
#      projection, as generate/chat/serve decode; q8_0; f32 weights) vs transformers on the same
#      dequantised weights vs llama.cpp's llama-bench on the same GGUF; and generation after a
#      1024-token prompt (decoding over a long KV cache).
#
#   4. tokenization MB/s against tiktoken (bench/tokenize.sh: GPT-2's tokenizer, the shared books).
#
# The header prints the CPU model and its SIMD flags. On a CPU with AVX-512 the three parts run twice:
# as the CPU is, then as an AVX2 machine (CHATFORGE_NO_AVX512=1; llama.cpp built with
# -DGGML_AVX512=OFF; PyTorch with ATEN_CPU_CAPABILITY=avx2 and MKL_ENABLE_INSTRUCTIONS=AVX2), so the
# AVX2 figures are measured wherever the bench runs. PASSES="native avx2" chooses (default: both where
# the CPU has AVX-512, else native, which is then AVX2 or less).
#
#   bash bench/cpu.sh            # RUNS=3 STEPS=12 THREADS=2 by default
#
# First use creates bench/.venv-torch (torch, transformers; large, so CI never does) and builds
# llama.cpp's llama-bench from the llama-cpp-python source package on PyPI into bench/.llama
# (cmake from PyPI; a few minutes on 2 cores). BENCH_PYTHON=path/to/python skips the venv.
# Writes bench/results/cpu_{train,gemm,decode}.json (the avx2 pass: cpu_*_avx2.json) and
# cpu_tokenize.json, and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
STEPS=${STEPS:-12}
RESULTS=${RESULTS:-bench/results}
DATA=../shared/data
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PY=${BENCH_PYTHON:-}
if [ -z "$PY" ]; then
  [ -x bench/.venv-torch/bin/python ] || {
    python3 -m venv bench/.venv-torch
    bench/.venv-torch/bin/pip install -q torch numpy transformers safetensors
  }
  PY=bench/.venv-torch/bin/python
fi
LLAMA_BENCH=$(bash bench/build_llama.sh "$THREADS")
cargo build --release --bin chatforge --example gemm_gflops
CF=target/release/chatforge
SIMD=$(grep -o -w 'avx512f\|avx512_vnni\|avx2\|fma\|f16c\|asimd' /proc/cpuinfo | sort -u | tr '\n' ' ')
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') | SIMD: ${SIMD:-none}"
export CPU
# MFU is against this clock: the nominal one /proc/cpuinfo reports (boost clocks make MFU read high).
PEAK_GHZ=${PEAK_GHZ:-$(awk -F: '/cpu MHz/ {printf "%.2f", $2 / 1000; exit}' /proc/cpuinfo)}
export PEAK_GHZ=${PEAK_GHZ:-2.3}
echo "== CPU: $CPU | $THREADS threads"
case " $SIMD " in *" avx512f "*) PASSES=${PASSES:-native avx2} ;; *) PASSES=${PASSES:-native} ;; esac

# Training data: the reference model's tokenizer and shards; random ids for the 124M shape.
$CF tokenizer train --input $DATA/tinyshakespeare.txt --vocab-size 8192 --out "$WORK/tok" >/dev/null
$CF data prepare --tokenizer "$WORK/tok" --input $DATA/tinyshakespeare.txt --out "$WORK/data" >/dev/null
$PY bench/gpu/make_shard.py "$WORK/data124" 400000
SMOL=$DATA/SmolLM2-135M-Instruct.Q4_1.gguf
$CF convert --input $SMOL --output "$WORK/smollm2" >/dev/null 2>&1
train() { # name run model-shape-args...
  local name=$1 run=$2 data=$3 ctx=$4 batch=$5 layers=$6 heads=$7 dim=$8
  $CF pretrain --out "$PASS_WORK/cf-$name-$run" --set data.dir="$data" --set model.preset=tiny \
    --set model.n_layer="$layers" --set model.n_head="$heads" --set model.n_embd="$dim" \
    --set train.context="$ctx" --set train.batch_size="$batch" --set train.max_steps="$STEPS" \
    --set train.warmup_steps=2 --set train.log_every=1 --set eval.every=0 --set eval.tokens=4096 \
    --set eval.sample_every=0 --set eval.sample_tokens=4 --set checkpoint.every=0 >/dev/null 2>&1
  echo "$name=$PASS_WORK/cf-$name-$run/metrics.jsonl" >>"$PASS_WORK/cf-runs.txt"
  local vocab; vocab=$(python3 -c "import json;print(json.load(open('$data/meta.json'))['vocab_size'])" 2>/dev/null || echo 50257)
  $PY bench/torch_gpt2.py --shard "$(ls "$data"/*train*.bin | head -1)" --steps "$STEPS" --batch "$batch" \
    --context "$ctx" --configs eager:f32 --device cpu --vocab "$vocab" --layers "$layers" --heads "$heads" \
    --dim "$dim" --threads "$THREADS" | sed "s/^{/{\"model\": \"$name\", /" >>"$PASS_WORK/torch-train.jsonl"
}
# One pass: training, GEMM, decoding, with the SIMD the environment allows; its files in $PASS_WORK.
measure() {
  for run in $(seq "$RUNS"); do
    echo "== training, run $run/$RUNS"
    train reference "$run" "$WORK/data" 256 8 6 6 384
  done
  echo "== training, GPT-2 124M shape"
  train gpt2-124m 1 "$WORK/data124" 128 4 12 12 768

  echo "== GEMM"
  target/release/examples/gemm_gflops >"$PASS_WORK/gemm.jsonl"
  CHATFORGE_NO_AVX512=1 target/release/examples/gemm_gflops | sed 's/"chatforge"/"gemm crate"/' >>"$PASS_WORK/gemm.jsonl"
  $PY bench/cpu/torch_gemm.py "$THREADS" >>"$PASS_WORK/gemm.jsonl"

  echo "== decoding SmolLM2-135M"
  for w in auto q8_0 f32; do
    label="$w weights"
    [ $w = auto ] && label="the file's 4-bit blocks, 8-bit output"
    $CF bench --model $SMOL --weights $w --runs 5 --json | sed "s/^{/{\"impl\": \"chatforge ($label)\", /" >>"$PASS_WORK/decode.jsonl"
  done
  $PY bench/cpu/hf_decode.py --model "$WORK/smollm2" --runs 5 --threads "$THREADS" >>"$PASS_WORK/decode.jsonl"
  $llama_bench -m $SMOL -t "$THREADS" -p 128 -n 64 -r 5 -o json 2>/dev/null >"$PASS_WORK/llama.json"
  echo "== decoding SmolLM2-135M after a 1024-token prompt"
  $CF bench --model $SMOL --prompt-tokens 1024 --runs 3 --json \
    | sed "s/^{/{\"impl\": \"chatforge (the file's 4-bit blocks, 8-bit output)\", /" >"$PASS_WORK/decode_long.jsonl"
  $PY bench/cpu/hf_decode.py --model "$WORK/smollm2" --prompt-tokens 1024 --runs 3 --threads "$THREADS" >>"$PASS_WORK/decode_long.jsonl"
  $llama_bench -m $SMOL -t "$THREADS" -p 0 -n 64 -d 1024 -r 3 -o json 2>/dev/null >"$PASS_WORK/llama_long.json"
}

mkdir -p "$RESULTS"
for pass in $PASSES; do
  PASS_WORK="$WORK/$pass"
  mkdir -p "$PASS_WORK"
  case $pass in
    native) llama_bench=$LLAMA_BENCH; suffix="" ;;
    avx2) llama_bench=$(LLAMA_AVX2_ONLY=1 bash bench/build_llama.sh "$THREADS"); suffix=_avx2 ;;
    *) echo "PASSES: unknown pass '$pass' (native, avx2)" >&2; exit 2 ;;
  esac
  echo "== pass: $pass"
  (
    if [ "$pass" = avx2 ]; then
      export CHATFORGE_NO_AVX512=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
    fi
    measure
  )
  if [ "$pass" = avx2 ]; then simd_used=avx2; else
    case " $SIMD " in *" avx512f "*) simd_used=avx512 ;; *" avx2 "*) simd_used=avx2 ;; *) simd_used=portable ;; esac
  fi
  SIMD_USED=$simd_used SUFFIX=$suffix $PY bench/cpu/report.py "$RESULTS" "$PASS_WORK"
done

echo "== tokenization"
THREADS=$THREADS RUNS=$RUNS RESULTS=$RESULTS bash bench/tokenize.sh "$CF"
