#!/usr/bin/env bash
# ARM: builds chatforge for aarch64-unknown-linux-gnu (Graviton, Ampere, Raspberry Pi 4/5, Linux on
# Apple Silicon) with Debian's cross compiler and runs the tests that check numbers under
# qemu-aarch64 (Debian's qemu-user): the CPU kernels against candle, the models against
# transformers, the quantized decoding against llama.cpp, the tokenizers, data, LoRA, the command
# line's errors. On ARM no x86 kernel is compiled in; what runs is the portable code and the gemm
# crate's NEON kernels. Speed on ARM cannot be measured under emulation; correctness can.
#
# The tests that start the chatforge binary run it through qemu-aarch64 too (CHATFORGE_TEST_RUNNER,
# tests/common's chatforge_command): cargo's runner starts only the test binaries. Left out: the
# long runs (training, SFT, resume after a crash, speedrun, the servers, MPI), minutes each under
# emulation. Run from .ci/run; by hand: bash tests/aarch64.sh [--test NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

# Without the cross tools (no package mirror, no rustup server) this says so and stops without
# failing, unless CHATFORGE_REQUIRE_AARCH64=1; a build or test that fails always fails.
unavailable() {
    echo "aarch64: SKIPPED, $1 could not be installed (the tests did not run on ARM)" >&2
    [ -z "${CHATFORGE_REQUIRE_AARCH64:-}" ] || exit 1
    exit 0
}
if ! { command -v aarch64-linux-gnu-gcc && command -v qemu-aarch64 && [ -d "$SYSROOT/lib" ]; } >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null; } ||
        unavailable "Debian's gcc-aarch64-linux-gnu / qemu-user"
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET" || unavailable "the Rust target $TARGET (rustup target add)"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CHATFORGE_TEST_RUNNER="qemu-aarch64 -L $SYSROOT"
# One CPU-heavy test at a time: every test already uses the cores through the kernels' threads.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-1}

if [ $# -gt 0 ]; then
    TESTS=("$@")
else
    TESTS=(--lib
        --test fused_ops --test device_ops --test model_reference --test one_decoder
        --test gguf_smollm2 --test generation --test lora --test dpo --test rl
        --test tokenizer --test tokenizer_fast --test data --test chat_data
        --test hostile_files --test fuzz_readers --test eval_tasks --test synthetic
        --test cli_errors --test output_safety --test threads
        # SmolLM2's f32 forward passes take minutes each under emulation; the same code is checked
        # on the tiny models of model_reference. Its quantized decoding (the portable int8 path,
        # against llama.cpp) and its tokenizer stay.
        -- --skip multiple_choice_log_likelihoods_equal_transformers
        --skip greedy_tokens_equal_transformers_and_it_knows_paris
        --skip chat_repl_keeps_the_conversation_and_saves_it
        --skip eval_scores_the_quantized_blocks_when_asked
        # Three DPO training runs: 12 minutes under emulation, and the RL runs likewise; their
        # numbers are checked by the TRL fixture tests, which stay.
        --skip dpo_learns_the_preference_and_resumes_exactly
        --skip rl_logs_rewards_draws_its_curve_and_resumes_exactly)
fi
echo "aarch64: $(aarch64-linux-gnu-gcc --version | head -1); $(qemu-aarch64 --version | head -1)"
# Code that only x86 uses would be dead code here: the lints for this target too.
[ $# -gt 0 ] || cargo clippy --release --target "$TARGET" --all-targets -- -D warnings
cargo test --release --target "$TARGET" --no-fail-fast "${TESTS[@]}"
