#!/usr/bin/env bash
# Writes tests/fixtures/smollm2_llamacpp_greedy.json: llama.cpp's greedy continuation of each prompt
# of smollm2_greedy.json on ../shared/data/SmolLM2-135M-Instruct.Q4_1.gguf (its `llama-simple`
# example: 32 new tokens at most, stopping at an end-of-generation token) and its greedy steps
# with their logit margins (tools/llama_greedy.c, against libllama), which chatforge's quantized
# path (the file's own blocks times 8-bit activations) must follow.
# Builds llama.cpp once with bench/build_llama.sh.
#
#   bash tools/make_llamacpp_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/build_llama.sh >/dev/null
bench/.llama/venv/bin/cmake --build bench/.llama/build --target llama-simple -j2 >/dev/null
L=bench/.llama/llama_cpp_python-0.3.16/vendor/llama.cpp
gcc -O2 -o bench/.llama/llama_greedy tools/llama_greedy.c -I$L/include -I$L/ggml/include \
  -Lbench/.llama/build/bin -lllama -Wl,-rpath,"$PWD/bench/.llama/build/bin"
python3 - <<'PY'
import json, subprocess
gguf = "../shared/data/SmolLM2-135M-Instruct.Q4_1.gguf"
cases = json.load(open("tests/fixtures/smollm2_greedy.json"))
out = []
for c in cases:
    p = c["prompt"]
    run = subprocess.run(["bench/.llama/build/bin/llama-simple", "-m", gguf, "-n", "32", p],
                         capture_output=True, text=True, check=True)
    # llama-simple prints the prompt's pieces, then each new token's.
    assert run.stdout.startswith(p), (p, run.stdout[:200])
    ids = " ".join(map(str, c["prompt_ids"]))
    steps = subprocess.run(["bench/.llama/llama_greedy", gguf, "32"], input=ids,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    steps = [[int(a), float(b), float(c)] for a, b, c in (s.split() for s in steps if s)]
    out.append({"prompt": p, "llama_cpp_text": run.stdout[len(p):].rstrip("\n"),
                "steps": steps})
meta = {"source": "llama.cpp (vendored in llama-cpp-python 0.3.16): llama-simple's greedy text "
                  "(-n 32) and tools/llama_greedy.c's greedy steps [id, top logit, second logit]",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "cases": out}
json.dump(meta, open("tests/fixtures/smollm2_llamacpp_greedy.json", "w"), indent=1,
          ensure_ascii=False)
for o in out:
    print(repr(o["llama_cpp_text"]), min(a - b for _, a, b in o["steps"]))
PY
