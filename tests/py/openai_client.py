"""Talks to a running `chatforge serve` with the official openai client; exits non-zero on failure.

    python tests/py/openai_client.py BASE_URL API_KEY MODEL_ID
"""
import sys

import openai
from openai import OpenAI

base, key, model = sys.argv[1:4]
client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)

ids = [m.id for m in client.models.list().data]
assert ids == [model], ids

msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, seed=1,
                                   logprobs=True, top_logprobs=3)
c = r.choices[0]
assert r.object == "chat.completion" and c.message.role == "assistant", r
assert c.finish_reason in ("stop", "length"), c.finish_reason
assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
assert len(c.logprobs.content) == r.usage.completion_tokens, c.logprobs
assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in c.logprobs.content)

# Greedy streaming gives the same text as greedy non-streaming.
stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, seed=1,
                                        stream=True, stream_options={"include_usage": True})
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            pieces.append(ch.delta.content)
        if ch.finish_reason:
            finish = ch.finish_reason
assert "".join(pieces) == c.message.content, (pieces, c.message.content)
assert finish == c.finish_reason and usage.completion_tokens == r.usage.completion_tokens

# Completions, streaming and not, with a stop string.
t = client.completions.create(model=model, prompt="ROMEO: ", max_tokens=20, temperature=0.9, seed=3, logprobs=2)
assert t.choices[0].logprobs.tokens and len(t.choices[0].logprobs.top_logprobs[0]) == 2
text = t.choices[0].text
s = "".join(ch.choices[0].text for ch in client.completions.create(model=model, prompt="ROMEO: ", max_tokens=20,
                                                                      temperature=0.9, seed=3, stream=True) if ch.choices)
assert s == text, (s, text)
if len(text) > 4:
    stop = text[2:4]
    cut = client.completions.create(model=model, prompt="ROMEO: ", max_tokens=20, temperature=0.9, seed=3, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"

# Errors come back as OpenAI errors.
for call, status in [
    (lambda: client.chat.completions.create(model="no-such-model", messages=msgs), 404),
    (lambda: client.chat.completions.create(model=model, messages=msgs, max_tokens=10**6), 400),
    (lambda: OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list(), 401),
]:
    try:
        call()
        raise AssertionError(f"expected HTTP {status}")
    except openai.APIStatusError as e:
        assert e.status_code == status, (e.status_code, status, e.message)
print("openai client: all checks passed")
