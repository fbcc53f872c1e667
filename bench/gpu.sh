#!/usr/bin/env bash
# GPU training benchmark: chatforge (built with --features nccl, i.e. CUDA and NCCL) against PyTorch eager and
# torch.compile, GPT-2 124M at context 1024, fp32 and bf16, on the same token shard. One command,
# a few minutes on an H100/H200:
#
#   bash bench/gpu.sh                      # builds chatforge with CUDA (tools/cuda-toolchain.sh)
#   CHATFORGE_BIN=path/to/chatforge bash bench/gpu.sh   # a chatforge built elsewhere
#
# Needs python3 with torch (CUDA) and numpy. Runs tests/cuda_reference.rs first, then writes
# bench/results/gpu_gpt2_124m.json (or $RESULTS/...) and prints the table, the one-rank NCCL check
# and a bf16 train.profile.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-20}
BATCH=${BATCH:-8}
RESULTS=${RESULTS:-bench/results}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ -z "${CHATFORGE_BIN:-}" ]; then
  bash tools/cuda-toolchain.sh
  # shellcheck disable=SC1091
  source .cuda-toolchain/env.sh
  cargo build --release --features nccl --target-dir target-cuda --bin chatforge
  CHATFORGE_BIN=target-cuda/release/chatforge
  BUILT_HERE=1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# Correctness on this GPU first (tests/cuda_reference.rs: logits, loss and every gradient against
# transformers; bf16 loss; cached decoding). CHATFORGE_CUDA_TESTS: that test binary, built elsewhere
# and run from the repository root; else it is built here, beside the binary.
echo "== CUDA against transformers (tests/cuda_reference.rs)"
cuda_tests=()
if [ -n "${CHATFORGE_CUDA_TESTS:-}" ]; then
  cuda_tests=("$CHATFORGE_CUDA_TESTS" --test-threads 1)
elif [ -n "${BUILT_HERE:-}" ]; then
  cuda_tests=(cargo test --release --features nccl --target-dir target-cuda --test cuda_reference -- --test-threads 1)
fi
if [ ${#cuda_tests[@]} -eq 0 ]; then
  echo "skipped: CHATFORGE_BIN was given without CHATFORGE_CUDA_TESTS"
elif ! "${cuda_tests[@]}" 2>&1 | grep -E "^test |test result|panicked|differ|CUDA"; then
  echo "CUDA reference tests FAILED"
fi

python3 bench/gpu/make_shard.py "$WORK/data"
runs=()
for dtype in f32 bf16; do
  echo "== chatforge $dtype"
  # A failure is reported and the benchmark goes on with the other runs.
  if "$CHATFORGE_BIN" pretrain --out "$WORK/cf-$dtype" --device cuda \
    --set data.dir="$WORK/data" --set model.preset=gpt2 --set train.context=1024 \
    --set train.batch_size="$BATCH" --set train.max_steps="$STEPS" --set train.dtype=$dtype \
    --set train.lr=6e-4 --set train.warmup_steps=2 --set train.log_every=5 \
    --set eval.every=0 --set eval.tokens=8192 --set eval.sample_every=0 --set eval.sample_tokens=8 \
    --set checkpoint.every=0 >"$WORK/cf-$dtype.log" 2>&1; then
    runs+=("$dtype=$WORK/cf-$dtype")
  else
    echo "chatforge $dtype FAILED"
  fi
  tail -n 12 "$WORK/cf-$dtype.log"
done
# The NCCL path on one GPU (a torchrun-style launch of one rank): its all-reduce of one rank must
# leave the f32 run's losses as they were.
if [ -n "${runs[0]:-}" ] && [ "${runs[0]%%=*}" = f32 ]; then
  echo "== chatforge f32 over NCCL, one rank (losses against the plain f32 run)"
  if RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
    "$CHATFORGE_BIN" pretrain --out "$WORK/cf-nccl" --device cuda \
    --set data.dir="$WORK/data" --set model.preset=gpt2 --set train.context=1024 \
    --set train.batch_size="$BATCH" --set train.max_steps="$STEPS" --set train.lr=6e-4 \
    --set train.warmup_steps=2 --set train.log_every=5 --set eval.every=0 --set eval.tokens=8192 \
    --set eval.sample_every=0 --set eval.sample_tokens=8 --set checkpoint.every=0 \
    --set train.profile=true >"$WORK/cf-nccl.log" 2>&1; then
    grep -A8 "^profile over" "$WORK/cf-nccl.log" || true
    python3 - "$WORK/cf-f32/metrics.jsonl" "$WORK/cf-nccl/metrics.jsonl" <<'PY'
import json, sys
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if r.get("kind") == "train"}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
for s in sorted(b):
    print(f"step {s}: plain {a.get(s, float('nan')):.6f}  nccl {b[s]:.6f}")
PY
  else
    echo "chatforge over NCCL FAILED"; tail -n 20 "$WORK/cf-nccl.log"
  fi
fi
# Where a bf16 step's time goes (train.profile synchronizes the GPU between phases).
echo "== chatforge bf16, profiled"
"$CHATFORGE_BIN" pretrain --out "$WORK/cf-prof" --device cuda \
  --set data.dir="$WORK/data" --set model.preset=gpt2 --set train.context=1024 \
  --set train.batch_size="$BATCH" --set train.max_steps=8 --set train.dtype=bf16 \
  --set train.warmup_steps=2 --set eval.every=0 --set eval.tokens=8192 --set eval.sample_every=0 \
  --set checkpoint.every=0 --set train.profile=true 2>&1 | grep -A8 "^profile over" \
  || echo "chatforge bf16 profile FAILED"
echo "== PyTorch"
python3 bench/torch_gpt2.py --shard "$WORK/data/bench_train_000000.bin" --steps "$STEPS" \
  --batch "$BATCH" | tee "$WORK/torch.jsonl"
mkdir -p "$RESULTS"
python3 bench/gpu/report.py "$RESULTS/gpu_gpt2_124m.json" "$WORK/torch.jsonl" "${runs[@]}"
