#!/usr/bin/env python3
"""Writes the golden fixtures in tests/fixtures/ with the reference implementation (transformers +
torch), and checks that transformers loads what chatforge saves.

    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors
    .venv/bin/python tools/make_fixtures.py                       # regenerate fixtures
    .venv/bin/python tools/make_fixtures.py --check-chatforge target/release/chatforge

Fixtures (all small):
  gpt2-tiny/, llama-tiny/        random-weight HF model directories (llama: GQA, untied embeddings)
  *-expected.safetensors         input_ids, targets (-100 = ignored), logits, loss, grad.<hf name>
  gpt2_tokenizer_ids.json        GPT-2 token ids of awkward texts
  gpt2-tiny-eval/, eval_text.txt a GPT-2 with its own BPE tokenizer, and a text to score
  gpt2-tiny-eval-expected.json   loss / tokens / bits per byte of that text under transformers
  smollm2_greedy.json            SmolLM2-135M-Instruct (GGUF, dequantised): chat prompt ids, 32 greedy ids
  *-lora/, *-lora-expected.safetensors
                                 PEFT LoRA adapters (r=4, all linear layers) on the tiny models, with
                                 logits, loss and adapter gradients
  smollm2_multiple_choice.json   its HellaSwag / ARC-Easy choice log-likelihoods (25 items), with
                                 acc / acc_norm; `summary=N` adds them on the first N items
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "tests", "fixtures")
DATA = os.path.join(ROOT, "..", "shared", "data")

VOCAB, T, B = 128, 12, 2

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Grüße aus München – naïve café, 東京タワー, Москва, مرحبا بالعالم, नमस्ते",
    "emoji 🎉🚀👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and skin tones 👍🏽",
    "   leading spaces\n\n\n\ttabs\t\tand   runs     of spaces   \r\n trailing   ",
    "def f(x):\n    return x**2  # comment\n\nif __name__ == '__main__':\n\tprint(f(3))",
    "numbers 1234567890 3.14159 1e-10 0x1F and contractions: don't, I'll, we've, she's",
    "<|endoftext|>special token inside text<|endoftext|>",
    "",
]


def randomize(model, seed):
    """Weights far from init so that a swapped or transposed tensor changes the logits a lot."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1.0 + noise if ("ln_" in name or "norm" in name) else noise * 2.0)


def expected(model, path, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    targets = torch.randint(0, VOCAB, (B, T), generator=g)
    targets[0, :3] = -100  # ignored positions, as a prompt mask would make them
    targets[1, 5] = -100
    model.zero_grad()
    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    out = {
        "input_ids": ids,
        "targets": targets,
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.detach().contiguous()
    save_file(out, path)
    print(f"{path}: loss {loss.item():.6f}")


def make_models():
    torch.manual_seed(0)
    gcfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    gpt2 = GPT2LMHeadModel(gcfg).eval()
    randomize(gpt2, 1)
    gpt2.save_pretrained(os.path.join(FIX, "gpt2-tiny"), safe_serialization=True)
    expected(gpt2, os.path.join(FIX, "gpt2-tiny-expected.safetensors"), 2)

    lcfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                       bos_token_id=0, eos_token_id=1)
    llama = LlamaForCausalLM(lcfg).eval()
    randomize(llama, 3)
    llama.save_pretrained(os.path.join(FIX, "llama-tiny"), safe_serialization=True)
    expected(llama, os.path.join(FIX, "llama-tiny-expected.safetensors"), 4)


def gpt2_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE.from_file(os.path.join(DATA, "gpt2_encoder.json"),
                                        os.path.join(DATA, "gpt2_vocab.bpe")))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    hf.add_special_tokens({"additional_special_tokens": []})
    cases = [{"text": t, "ids": hf.encode(t, add_special_tokens=False)} for t in TEXTS]
    try:  # a second, independent implementation where it is installed
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(DATA, "gpt2_vocab.bpe"),
                                                os.path.join(DATA, "gpt2_encoder.json"))
        enc = tiktoken.Encoding("gpt2", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                                mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
        for c in cases:
            assert enc.encode(c["text"], allowed_special="all") == c["ids"], c["text"]
        print("tiktoken agrees on every GPT-2 tokenizer case")
    except ImportError:
        pass
    with open(os.path.join(FIX, "gpt2_tokenizer_ids.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)


def eval_fixture():
    """A tiny GPT-2 with its own BPE tokenizer, and the loss / bits per byte transformers gives it on
    a text scored in non-overlapping windows of the context (what `chatforge eval --task ppl` does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = open(os.path.join(DATA, "tinyshakespeare.txt"), encoding="utf-8").read()
    train_text, eval_text = text[:50000], text[50000:53000]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([train_text], trainer)
    out = os.path.join(FIX, "gpt2-tiny-eval")
    torch.manual_seed(5)
    cfg = GPT2Config(vocab_size=320, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" not in name:
                p.normal_(0, 0.3)
    model.save_pretrained(out, safe_serialization=True)
    tk.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(FIX, "eval_text.txt"), "w", encoding="utf-8") as f:
        f.write(eval_text)
    ids = tk.encode(eval_text).ids
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())  # each character stands for one byte
    nbytes = [len(tk.id_to_token(i)) if i != 0 else 0 for i in range(tk.get_vocab_size())]
    assert all(ch in alphabet for i in range(1, tk.get_vocab_size()) for ch in tk.id_to_token(i))
    ctx, nats, count, nb = 128, 0.0, 0, 0
    for start in range(0, len(ids) - 1, ctx):
        w = torch.tensor([ids[start:start + ctx + 1]])
        with torch.no_grad():
            logits = model(input_ids=w[:, :-1]).logits
        nats += F.cross_entropy(logits[0], w[0, 1:], reduction="sum").item()
        count += w.shape[1] - 1
        nb += sum(nbytes[t] for t in w[0, 1:].tolist())
    result = {"loss": nats / count, "tokens": count, "bits_per_byte": nats / math.log(2) / nb}
    with open(os.path.join(FIX, "gpt2-tiny-eval-expected.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("eval fixture:", result)


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "What is 12 * 7?"]


def smollm2_fixture():
    """Greedy continuations of SmolLM2-135M-Instruct (the GGUF in ../shared/data, dequantised to
    fp32 by transformers): chat-templated prompt ids and the first 32 greedy tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DATA, gguf_file=SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(DATA, gguf_file=SMOLLM2, dtype=torch.float32).eval()
    cases = []
    prompts = [(p, tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False))
               for p in CHAT_PROMPTS]
    prompts.append((None, "The quick brown fox"))
    for user, text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out, past, x = [], None, torch.tensor([ids])
        with torch.no_grad():
            for _ in range(32):
                r = model(input_ids=x, past_key_values=past, use_cache=True)
                past = r.past_key_values
                nxt = int(r.logits[0, -1].argmax())
                out.append(nxt)
                x = torch.tensor([[nxt]])
        cases.append({"user": user, "prompt": text, "prompt_ids": ids, "greedy_ids": out,
                      "greedy_text": tok.decode(out)})
        print(repr(text[-40:]), "->", repr(tok.decode(out)))
    with open(os.path.join(FIX, "smollm2_greedy.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)


def mc_items(task, limit):
    """Multiple-choice items formatted as chatforge formats them (see src/eval/tasks.rs)."""
    path = os.path.join(DATA, "hellaswag_val.jsonl" if task == "hellaswag" else "arc_easy_test.jsonl")
    items = []
    for line in open(path, encoding="utf-8"):
        if len(items) == limit:
            break
        v = json.loads(line)
        if task == "hellaswag":
            items.append((f"{v['activity_label']}: {v['ctx']}", [" " + e for e in v["endings"]], int(v["label"])))
        else:
            items.append((v["query"] + "\nAnswer:", [" " + c for c in v["choices"]], int(v["gold"])))
    return items


def mc_scores(model, tok, items):
    """Per-choice summed log-likelihoods (context and continuation tokenized separately, as
    lm-evaluation-harness does), with acc and length-normalised acc_norm."""
    out, acc, acc_norm = [], 0, 0
    for ctx, choices, gold in items:
        c_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        lls = []
        for ch in choices:
            k_ids = tok(ch, add_special_tokens=False)["input_ids"]
            x = torch.tensor([c_ids + k_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            lls.append(sum(logp[len(c_ids) - 1 + j, t].item() for j, t in enumerate(k_ids)))
        acc += max(range(len(lls)), key=lambda j: lls[j]) == gold
        acc_norm += max(range(len(lls)), key=lambda j: lls[j] / len(choices[j].encode())) == gold
        out.append({"lls": lls, "gold": gold})
    return out, acc / len(items), acc_norm / len(items)


def smollm2_mc_fixture(limit=25, summary=0):
    """SmolLM2 (dequantised) on HellaSwag and ARC-Easy: per-choice log-likelihoods of the first
    `limit` items (tests compare them), and acc / acc_norm on the first `summary` items."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DATA, gguf_file=SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(DATA, gguf_file=SMOLLM2, dtype=torch.float32).eval()
    fixture = {}
    for task in ["hellaswag", "arc_easy"]:
        scores, acc, acc_norm = mc_scores(model, tok, mc_items(task, limit))
        fixture[task] = {"items": scores, "acc": acc, "acc_norm": acc_norm}
        if summary:
            _, acc, acc_norm = mc_scores(model, tok, mc_items(task, summary))
            fixture[task][f"first_{summary}"] = {"acc": acc, "acc_norm": acc_norm}
        print(task, {k: v for k, v in fixture[task].items() if k != "items"})
    with open(os.path.join(FIX, "smollm2_multiple_choice.json"), "w") as f:
        json.dump(fixture, f, indent=1)


def lora_fixture():
    """PEFT LoRA adapters (random A and B, so they change the logits) on the tiny models, their logits,
    loss, and the gradients of the adapter weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = {"gpt2-tiny": ["c_attn", "c_proj", "c_fc"],
               "llama-tiny": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    for seed, (name, mods) in enumerate(targets.items()):
        torch.manual_seed(10 + seed)
        base = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, name), dtype=torch.float32).eval()
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=mods, lora_dropout=0.0, init_lora_weights=False,
                         fan_in_fan_out=name.startswith("gpt2"), task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg).eval()
        from safetensors.torch import load_file
        ref = load_file(os.path.join(FIX, f"{name}-expected.safetensors"))
        ids, targets_ = ref["input_ids"], ref["targets"]
        model.zero_grad()
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets_.reshape(-1), ignore_index=-100)
        loss.backward()
        out = {"input_ids": ids, "targets": targets_, "logits": logits.detach().contiguous(),
               "loss": loss.detach().reshape(1)}
        for pname, p in model.named_parameters():
            if p.requires_grad:
                out["grad." + pname.replace(".default", "")] = p.grad.detach().contiguous()
        save_file(out, os.path.join(FIX, f"{name}-lora-expected.safetensors"))
        adir = os.path.join(FIX, f"{name}-lora")
        model.save_pretrained(adir)
        os.remove(os.path.join(adir, "README.md"))
        acfg_path = os.path.join(adir, "adapter_config.json")
        acfg = json.load(open(acfg_path))
        acfg["base_model_name_or_path"] = f"../{name}"  # relative to the adapter directory
        json.dump(acfg, open(acfg_path, "w"), indent=2)
        merged = model.merge_and_unload()
        with torch.no_grad():
            mdiff = (merged(input_ids=ids).logits - logits).abs().max().item()
        print(f"{name}-lora: loss {loss.item():.6f}, {sum(1 for k in out if k.startswith('grad.'))} adapter tensors, "
              f"merged-vs-adapter max diff {mdiff:.2e}")


def check_chatforge(binary):
    """transformers must load what chatforge saves, unchanged, and compute the same logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    for name in ["gpt2-tiny", "llama-tiny"]:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, name)
            subprocess.run([binary, "convert", "--input", os.path.join(FIX, name), "--output", out], check=True)
            model = AutoModelForCausalLM.from_pretrained(out).eval()
            exp = load_file(os.path.join(FIX, f"{name}-expected.safetensors"))
            with torch.no_grad():
                logits = model(input_ids=exp["input_ids"]).logits
            diff = (logits - exp["logits"]).abs().max().item()
            print(f"transformers loaded chatforge's {name}: max |logit diff| {diff:.2e}")
            assert diff < 1e-5, diff
    # A GGUF converted by chatforge loads in transformers and computes what transformers computes
    # from the GGUF itself (both dequantised).
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "smollm2")
        subprocess.run([binary, "convert", "--input", os.path.join(DATA, SMOLLM2), "--output", out], check=True)
        ours = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ref = AutoModelForCausalLM.from_pretrained(DATA, gguf_file=SMOLLM2, dtype=torch.float32).eval()
        ids = torch.tensor([json.load(open(os.path.join(FIX, "smollm2_greedy.json")))[0]["prompt_ids"]])
        with torch.no_grad():
            diff = (ours(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
        print(f"transformers loaded chatforge's conversion of {SMOLLM2}: max |logit diff| {diff:.2e}")
        assert diff < 1e-3, diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["models", "tokenizer", "eval", "smollm2", "mc", "lora"], help="regenerate one fixture group")
    ap.add_argument("--summary", type=int, default=0, help="with --only mc: also acc / acc_norm on the first N items")
    ap.add_argument("--check-chatforge", metavar="BIN", help="chatforge binary whose saved models transformers must load")
    args = ap.parse_args()
    if args.check_chatforge:
        check_chatforge(args.check_chatforge)
        return
    os.makedirs(FIX, exist_ok=True)
    groups = {"models": make_models, "tokenizer": gpt2_tokenizer, "eval": eval_fixture, "smollm2": smollm2_fixture,
              "mc": lambda: smollm2_mc_fixture(summary=args.summary), "lora": lora_fixture}
    for name, fn in groups.items():
        if args.only in (None, name):
            fn()


if __name__ == "__main__":
    sys.exit(main())
