#!/usr/bin/env bash
# Load check: starts `chatforge serve` on a model (default: the tiny test model with a plain-text chat
# template) and sends 100 concurrent streaming chat requests with the openai client.
#
#   bench/load_check.sh [MODEL_DIR_OR_GGUF] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
VENV=bench/.venv
[ -x $VENV/bin/python ] || { python3 -m venv $VENV && $VENV/bin/pip install -q openai; }
MODEL=${1:-}
N=${2:-100}
if [ -z "$MODEL" ]; then
    MODEL=bench/results/tmp/tiny-chat
    rm -rf "$MODEL" && mkdir -p "$MODEL" && cp tests/fixtures/gpt2-tiny-eval/* "$MODEL"/
    printf '%s' '{"chat_template": "{% for m in messages %}{{ m[\"role\"] }}: {{ m[\"content\"] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"}' > "$MODEL/tokenizer_config.json"
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/release/chatforge serve --model "$MODEL" --port "$PORT" --model-name bench --max-batch 128 2> bench/results/tmp-serve.log &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
$VENV/bin/python bench/load_check.py --base-url "http://127.0.0.1:$PORT/v1" --model bench --n "$N"
