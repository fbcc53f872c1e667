#!/usr/bin/env bash
# What the test suite needs besides Rust: the official openai Python client (in .venv-test/, which
# the server tests use), Debian's Chromium + ChromeDriver for the web page test, and Open MPI (with
# libclang for the bindings) for the data-parallel test of `--features mpi`. Run once, as root (or
# with sudo) for the apt part; .ci/run runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! { [ -x /usr/bin/chromium ] && { [ -x /usr/bin/chromedriver ] || [ -x /usr/lib/chromium/chromedriver ]; }; }; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! .venv-test/bin/python -c 'import openai' 2>/dev/null; then
    python3 -m venv .venv-test
    .venv-test/bin/pip install -q openai
fi
if ! { command -v mpirun && command -v mpicc && ls /usr/lib/llvm-*/lib/libclang.so; } >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi
echo "test dependencies ready: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), openai $(.venv-test/bin/python -c 'import openai; print(openai.__version__)'), $(mpirun --version 2>/dev/null | head -1)"
