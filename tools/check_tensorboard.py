"""TensorBoard's own reader on the event files of a chatforge run killed after its step-5
checkpoint (steps 6-10 logged, then lost) and resumed: the scalars it returns equal metrics.jsonl's
values (as f32), the lost steps purged, and the samples come back as text. Needs the `tensorboard` package (PyPI), so it runs by hand, not in CI:

    python3 -m venv /tmp/tb && /tmp/tb/bin/pip install -q tensorboard
    cargo build --release && /tmp/tb/bin/python tools/check_tensorboard.py
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

B = "target/release/chatforge"
DATA = "../shared/data/tinyshakespeare.txt"


def run(*args):
    subprocess.run([B, *args], check=True, capture_output=True)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


with tempfile.TemporaryDirectory() as tmp:
    with open(DATA) as f:
        text = f.read()[:300_000]
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write(text)
    run("tokenizer", "train", "--input", corpus, "--vocab-size", "512", "--out", f"{tmp}/tok")
    run("data", "prepare", "--tokenizer", f"{tmp}/tok", "--input", corpus, "--out", f"{tmp}/data")
    sets = [f"data.dir={tmp}/data", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
            "train.context=32", "train.batch_size=4", "train.max_steps=12", "eval.every=5",
            "eval.tokens=1024", "eval.sample_every=10", "checkpoint.every=5", "checkpoint.keep=3"]
    # Killed while writing its step-10 checkpoint (steps 6-10 logged, then lost): the resumed
    # run goes on from step 5, and TensorBoard must drop the lost steps.
    args = [B, "pretrain", "--out", f"{tmp}/run"]
    for s in sets:
        args += ["--set", s]
    child = subprocess.Popen(args, stderr=subprocess.DEVNULL,
                             env={**os.environ, "CHATFORGE_TEST_CHECKPOINT_PAUSE": "10:60000"})
    ckpts = f"{tmp}/run/checkpoints"
    while not any(n.startswith(".step_000010.tmp") and
                  os.path.exists(f"{ckpts}/{n}/model.safetensors")
                  for n in (os.listdir(ckpts) if os.path.isdir(ckpts) else [])):
        assert child.poll() is None, "training ended before the kill"
        time.sleep(0.02)
    child.kill()
    child.wait()
    run("pretrain", "--resume", f"{tmp}/run")

    acc = EventAccumulator(f"{tmp}/run", size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    records = [json.loads(l) for l in open(f"{tmp}/run/metrics.jsonl")]
    fails = 0
    checked = 0
    for tag, kind, key in [("train/loss", "train", "loss"), ("train/lr", "train", "lr"),
                           ("train/grad_norm", "train", "grad_norm"),
                           ("train/tokens_per_sec", "train", "tokens_per_sec"),
                           ("train/mfu", "train", "mfu"), ("val/loss", "val", "val_loss"),
                           ("val/bpb", "val", "val_bpb")]:
        got = {e.step: e.value for e in acc.Scalars(tag)}
        want = {r["step"]: f32(r[key]) for r in records if r["kind"] == kind}
        ok = got == want
        fails += not ok
        checked += len(want)
        print(f"{'ok  ' if ok else 'FAIL'} {tag}: {len(got)} values, "
              f"{'equal to' if ok else 'differ from'} metrics.jsonl's")
    samples = {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples")}
    want = {r["step"]: r["text"] for r in records if r["kind"] == "sample"}
    ok = samples == want
    fails += not ok
    print(f"{'ok  ' if ok else 'FAIL'} samples: {len(samples)} texts "
          f"{'equal to' if ok else 'differ from'} metrics.jsonl's; tags {tags['scalars']}")
    print(f"{checked} scalars checked; " + ("all checks passed" if not fails else f"{fails} failed"))
    sys.exit(1 if fails else 0)
