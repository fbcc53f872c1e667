#!/usr/bin/env bash
# llama.cpp loads what `chatforge convert --output FILE.gguf` writes, splits text into the same
# tokens and continues prompts as chatforge does. For a chatforge-trained tiny Llama (f32, f16,
# q8_0), a chatforge-trained tiny GPT-2 (f32, q8_0) and SmolLM2 round-tripped GGUF Q4_1 -> HF
# directory -> GGUF (q4_1, q8_0):
#   - llama.cpp's `llama-tokenize` ids of a text against `chatforge tokenizer encode`;
#   - `llama-simple`'s greedy continuation (32 tokens) of each prompt against `chatforge generate
#     --temperature 0` on the same file; where they part, llama.cpp's top two logits there must be
#     less than 1 apart (a close call, as tests/gguf_smollm2.rs allows);
#   - `llama-perplexity` against `chatforge eval --task ppl` on the f16 export, within 1%, scored
#     the same way (windows of the model's context that predict every token after their first,
#     one after the other: llama-perplexity's --ppl-stride).
#
# Builds llama.cpp once (bench/build_llama.sh), trains the two tiny models (about 3 minutes on 2
# cores), and writes everything under target/gguf-export-check. Too slow for CI; run by hand:
#
#   cargo build --release && bash tools/check_gguf_export.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/chatforge
DATA=../shared/data
W=target/gguf-export-check
rm -rf $W && mkdir -p $W
bash bench/build_llama.sh >/dev/null
bench/.llama/venv/bin/cmake --build bench/.llama/build --target llama-simple llama-tokenize \
  llama-perplexity -j2 >/dev/null
L=bench/.llama/build/bin
LS=bench/.llama/llama_cpp_python-0.3.16/vendor/llama.cpp
gcc -O2 -o bench/.llama/llama_greedy tools/llama_greedy.c -I$LS/include -I$LS/ggml/include \
  -L$L -lllama -Wl,-rpath,"$PWD/$L"

head -c 1000000 $DATA/tinyshakespeare.txt >$W/train.txt
tail -c 20000 $DATA/tinyshakespeare.txt >$W/heldout.txt
$B tokenizer train --input $W/train.txt --vocab-size 1024 --out $W/tok 2>/dev/null
$B data prepare --tokenizer $W/tok --input $W/train.txt --out $W/data 2>/dev/null
for preset in tiny-llama tiny; do
  $B pretrain --config configs/tiny-shakespeare.toml --set data.dir=$W/data \
    --set model.preset=$preset --set train.context=127 --set train.max_steps=300 \
    --set eval.every=300 --set eval.sample_every=0 --set checkpoint.every=300 \
    --out $W/$preset 2>$W/$preset.log
done
run() { "$@" 2>>$W/commands.log; }
run $B convert --input $W/tiny-llama/model --output $W/llama-f32.gguf --type f32
run $B convert --input $W/tiny-llama/model --output $W/llama-f16.gguf --type f16
run $B convert --input $W/tiny-llama/model --output $W/llama-q8_0.gguf --type q8_0
run $B convert --input $W/tiny/model --output $W/gpt2-f32.gguf --type f32
run $B convert --input $W/tiny/model --output $W/gpt2-q8_0.gguf --type q8_0
run $B convert --input $DATA/SmolLM2-135M-Instruct.Q4_1.gguf --output $W/smollm2-hf
run $B convert --input $W/smollm2-hf --output $W/smollm2-q4_1.gguf --type q4_1
run $B convert --input $W/smollm2-hf --output $W/smollm2-q8_0.gguf --type q8_0

B=$B W=$W L=$L python3 - <<'PY'
import json, math, os, re, subprocess
B, W, L = os.environ["B"], os.environ["W"], os.environ["L"]

def out(*cmd, stdin=None):
    return subprocess.run(cmd, capture_output=True, text=True, check=True, input=stdin).stdout

text = open(f"{W}/heldout.txt").read()[:4000]
open(f"{W}/text.txt", "w").write(text)
fails = 0
def check(what, ok, detail=""):
    global fails
    fails += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {what}{(': ' + detail) if detail else ''}")

shakespeare = ["ROMEO:", "First Citizen:\nWe are", "KING RICHARD III:\nNow is the"]
chat = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in
        ["What is the capital of France?", "Write a haiku about the sea.",
         "Explain why the sky is blue in one sentence."]]
for name, prompts in [("llama-f32", shakespeare), ("llama-f16", shakespeare),
                      ("llama-q8_0", shakespeare), ("gpt2-f32", shakespeare),
                      ("gpt2-q8_0", shakespeare), ("smollm2-q4_1", chat),
                      ("smollm2-q8_0", chat)]:
    g = f"{W}/{name}.gguf"
    # Tokenization: llama.cpp's ids of the text against ours (ours read from the same file).
    theirs = json.loads(out(f"{L}/llama-tokenize", "-m", g, "-f", f"{W}/text.txt", "--ids",
                            "--log-disable"))
    ours_dir = f"{W}/{name}-tok"
    if not os.path.isdir(ours_dir):
        out(B, "convert", "--input", g, "--output", ours_dir)
    ours = json.loads(out(B, "tokenizer", "encode", "--tokenizer", ours_dir, "--text", text))
    same = theirs == ours
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
    check(f"{name}: {len(ours)} token ids of 4,000 characters equal llama.cpp's", same,
          "" if same else f"first difference at {first}")
    for p in prompts:
        ll = out(f"{L}/llama-simple", "-m", g, "-n", "32", p)
        assert ll.startswith(p), (p, ll[:100])
        ll = ll[len(p):].rstrip("\n")
        cf = out(B, "generate", "--model", g, "--prompt", p, "--temperature", "0",
                 "--max-tokens", "32").rstrip("\n")
        if ll == cf:
            check(f"{name}: greedy continuation of {p!r}", True, repr(ll))
            continue
        # Where they part: llama.cpp's top two logits at that step (tools/llama_greedy.c).
        enc = lambda t: json.loads(out(B, "tokenizer", "encode", "--tokenizer", ours_dir,
                                       "--text", t))
        prompt_ids = enc(p)
        ours_ids = enc(p + cf)[len(prompt_ids):]
        steps = [l.split() for l in out("bench/.llama/llama_greedy", g, "32",
                                        stdin=" ".join(map(str, prompt_ids))).splitlines()]
        k = next(i for i, (a, st) in enumerate(zip(ours_ids + [-1] * 32, steps))
                 if a != int(st[0]))
        margin = float(steps[k][1]) - float(steps[k][2])
        check(f"{name}: greedy continuation of {p!r} parts from llama.cpp's at token {k}, a "
              f"close call (its top two logits {margin:.3f} apart)", margin < 1.0,
              f"llama.cpp {ll!r} / chatforge {cf!r}")

# Perplexity of the f16 export: windows of the context C that predict their tokens 1..C, every
# C tokens (llama-perplexity evaluates C + 1 tokens per window and scores its last C logits but one).
# The text is cut to n * C + 2 tokens: llama-perplexity scores only whole windows (and needs one
# token beyond the last), chatforge also the tail; so both score the same n * C tokens (and
# chatforge one more). llama-perplexity's window is -c plus half the stride, rounded up to a
# multiple of 32: so the models are trained with a context of 127, and -c is 128 - 63.
C = json.load(open(f"{W}/tiny-llama/model/config.json"))["max_position_embeddings"]
tok = f"{W}/llama-f16-tok"
ids = json.loads(out(B, "tokenizer", "encode", "--tokenizer", tok, "--text",
                     open(f"{W}/heldout.txt").read()))
cut = (len(ids) - 2) // C * C + 2
open(f"{W}/ppl.txt", "w").write(out(B, "tokenizer", "decode", "--tokenizer", tok, "--ids",
                                    json.dumps(ids[:cut])).removesuffix("\n"))
ppl = json.loads(out(B, "eval", "--model", f"{W}/llama-f16.gguf", "--task", "ppl",
                     "--data", f"{W}/ppl.txt", "--json"))
log = subprocess.run([f"{L}/llama-perplexity", "-m", f"{W}/llama-f16.gguf", "-f",
                      f"{W}/ppl.txt", "-c", str(C + 1 - C // 2), "-b", str(C + 1),
                      "--ppl-stride", str(C)], capture_output=True, text=True, check=True)
assert f"Calculation chunk = {C + 1}" in log.stdout + log.stderr, "llama.cpp's window"
theirs = float(re.findall(r"\[\d+\]([0-9.]+)", log.stdout + log.stderr)[-1])
ours = math.exp(ppl["loss"])
check(f"llama-f16: perplexity {ours:.4f} (chatforge, {ppl['tokens']} tokens) within 1% of "
      f"llama-perplexity's {theirs:.4f}", abs(ours / theirs - 1) < 0.01)
print("all checks passed" if fails == 0 else f"{fails} checks failed")
raise SystemExit(1 if fails else 0)
PY
