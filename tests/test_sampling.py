"""
Tests for the sampling engine: model.generate / generate_stream (KV cache, windows, ragged
batches), filter_logits / sample_next, and sample.py + smallgpt/interactive.py end to end.

    python -m pytest tests/test_sampling.py -q

CPU only, offline, under a minute on 2 cores. Two kinds of model:
- random tiny models (2 layers, 32 wide, block 16) with large weights, for parity: the cached
  engine must give the tokens (and logits) of nanoGPT's loop, written here: crop the context
  to the last `block_size` tokens, full forward, argmax;
- tiny models trained here on a repeating text ('hello world\\n'), so their greedy output is
  known without running our code: the continuation of the pattern. sample.py runs on them in a
  subprocess from a checkpoint the test writes. The GPT-2 BPE cases need the tiktoken cache in
  <repo>/../shared/data/tiktoken_cache and are skipped, with the reason, without it.
"""

import os
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from smallgpt.kvcache import KVCache  # noqa: E402
from smallgpt.generate import filter_logits, sample_next  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from conftest import needs_gpt2_bpe, randomize_weights, skip_without_gpt2_bpe  # noqa: E402

BLOCK = 16
TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, dropout=0.0)
V = 64



def random_model(seed=0, vocab_size=V, std=0.3):
    """Weights much larger than GPT-2's init, so logits are O(1)-O(10), greedy choices are not
    near-ties and generations wander over many tokens instead of repeating one."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY, vocab_size=vocab_size)).eval()
    return randomize_weights(model, seed, std)


@pytest.fixture(scope="module")
def engine_model():
    return random_model()


def random_prompt(length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (length,), generator=g).tolist()


def reference_greedy(model, prompt, max_new_tokens, window=BLOCK):
    """nanoGPT's sampling loop, greedy: crop to the last `window` tokens, forward, argmax."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([seq[-window:]]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def reference_logits(model, context):
    """Full forward, no cache: the next-token logits after `context` (a token list), (V,)."""
    with torch.no_grad():
        return model(torch.tensor([context]))[0][0, -1]


def stream_tokens(model, prompts, max_new_tokens, **kwargs):
    """generate_stream's tokens as one list per row."""
    steps = list(model.generate_stream(prompts, max_new_tokens, temperature=0, **kwargs))
    return torch.stack(steps, dim=1).tolist() if steps else [[] for _ in prompts]


# ----------------------------------------------------------------------------- KV cache parity

@pytest.mark.parametrize("prompt_len", [5, BLOCK, BLOCK + 7])  # shorter, equal, longer
def test_greedy_cache_equals_no_cache_and_nanogpt_loop(engine_model, prompt_len):
    new = 3 * BLOCK  # runs far past block_size
    prompts = [random_prompt(prompt_len, seed=1), random_prompt(prompt_len, seed=2)]
    cached = stream_tokens(engine_model, prompts, new, use_cache=True)
    uncached = stream_tokens(engine_model, prompts, new, use_cache=False)
    expected = [reference_greedy(engine_model, p, new) for p in prompts]
    assert len(set(expected[0])) > 5, "the test model should not just repeat one token"
    assert uncached == expected
    assert cached == expected


def test_generate_appends_to_the_prompt(engine_model):
    idx = torch.tensor([random_prompt(5, seed=3), random_prompt(5, seed=4)])
    out = engine_model.generate(idx, 20, temperature=0)
    assert out.shape == (2, 25) and torch.equal(out[:, :5], idx)
    assert out[0, 5:].tolist() == reference_greedy(engine_model, idx[0].tolist(), 20)
    assert torch.equal(engine_model.generate(idx, 0), idx)


@pytest.mark.parametrize("flash", [True, False])
def test_cached_decode_logits_match_full_forward(flash):
    """Drive forward() with a KVCache by hand: prefill, then one token at a time up to
    block_size; each step's logits equal a full forward over the same context."""
    model = random_model(seed=5)
    for block in model.transformer.h:
        block.attn.flash = flash
    seq = random_prompt(BLOCK, seed=6)
    cfg = model.config
    cache = KVCache.for_model(cfg, 1, BLOCK)
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:4]]), cache=cache)
        torch.testing.assert_close(logits[0, -1], reference_logits(model, seq[:4]), atol=1e-5, rtol=0)
        k_storage = cache.k[0].data_ptr()
        for t in range(4, BLOCK):
            logits, _ = model(torch.tensor([[seq[t]]]), cache=cache)
            assert cache.length == t + 1
            torch.testing.assert_close(logits[0, -1], reference_logits(model, seq[:t + 1]),
                                       atol=1e-5, rtol=0)
    assert cache.k[0].data_ptr() == k_storage, "the cache must be written in place, not reallocated"
    with pytest.raises(AssertionError):  # the cache is full: block_size reached
        model(torch.tensor([[seq[0]]]), cache=cache)


def test_stream_logits_match_the_reference_at_every_step(engine_model, recorded_logits):
    """The logits generate_stream samples from, step by step, well past block_size."""
    prompt = random_prompt(5, seed=7)
    tokens = stream_tokens(engine_model, [prompt], 2 * BLOCK)[0]
    seq = prompt + tokens
    assert len(recorded_logits) == 2 * BLOCK
    for step, logits in enumerate(recorded_logits):
        context = seq[:len(prompt) + step][-BLOCK:]
        torch.testing.assert_close(logits[0], reference_logits(engine_model, context), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- ragged batches

@pytest.mark.parametrize("flash", [True, False])  # the padding mask through both attention paths
def test_ragged_batch_equals_each_prompt_alone(flash, recorded_logits):
    engine_model = random_model()
    for block in engine_model.transformer.h:
        block.attn.flash = flash
    lengths = [3, 9, BLOCK, BLOCK + 4]
    prompts = [random_prompt(n, seed=10 + n) for n in lengths]
    new = 2 * BLOCK + 3  # every row goes past the window
    batched = stream_tokens(engine_model, prompts, new)
    for row, prompt in enumerate(prompts):
        assert batched[row] == reference_greedy(engine_model, prompt, new), f"row {row}"
    # and the logits of every row at every step, not only the argmax
    for step, logits in enumerate(recorded_logits):
        for row, prompt in enumerate(prompts):
            context = (prompt + batched[row])[:len(prompt) + step][-BLOCK:]
            torch.testing.assert_close(logits[row], reference_logits(engine_model, context),
                                       atol=1e-5, rtol=0, msg=lambda m: f"step {step} row {row}: {m}")


def test_ragged_batch_without_cache(engine_model):
    prompts = [random_prompt(2, seed=20), random_prompt(11, seed=21)]
    assert stream_tokens(engine_model, prompts, 25, use_cache=False) == \
        [reference_greedy(engine_model, p, 25) for p in prompts]


def test_a_tensor_of_prompts_and_a_list_agree(engine_model):
    prompts = [random_prompt(6, seed=22), random_prompt(6, seed=23)]
    assert stream_tokens(engine_model, torch.tensor(prompts), 10) == stream_tokens(engine_model, prompts, 10)


def test_empty_prompt_is_refused(engine_model):
    with pytest.raises(ValueError, match="at least one token"):
        stream_tokens(engine_model, [[1, 2], []], 3)


# ----------------------------------------------------------------------------- windows

@pytest.mark.parametrize("use_cache", [True, False])
def test_context_window_crops_like_nanogpt_with_a_shorter_block(engine_model, use_cache):
    W = 6
    prompts = [random_prompt(3, seed=30), random_prompt(10, seed=31)]
    got = stream_tokens(engine_model, prompts, 20, use_cache=use_cache, context_window=W)
    assert got == [reference_greedy(engine_model, p, 20, window=W) for p in prompts]
    # and it is a real change: the full block_size window predicts something else
    assert got != [reference_greedy(engine_model, p, 20) for p in prompts]


def test_window_arguments_are_checked(engine_model):
    with pytest.raises(ValueError, match="window_chunk"):
        stream_tokens(engine_model, [[1]], 2, window_chunk=BLOCK + 1)
    with pytest.raises(ValueError, match="window_chunk"):
        stream_tokens(engine_model, [[1]], 2, window_chunk=0)
    with pytest.raises(ValueError, match="context_window"):
        stream_tokens(engine_model, [[1]], 2, context_window=-3)


def test_window_chunk_is_exact_within_block_size_then_approximate(engine_model):
    """window_chunk=C > 1 (documented in generate_stream): until the context first exceeds the
    window nothing changes. Then, instead of one full-window prefill per token, the last
    window - C + 1 tokens are prefilled and C - 1 cached steps follow, so the context length
    cycles window-C+1, ..., window. That is the same as nanoGPT's loop with a per-step crop."""
    C, P, new = 4, 5, 3 * BLOCK
    prompt = random_prompt(P, seed=40)
    exact = stream_tokens(engine_model, [prompt], new, window_chunk=1)[0]
    chunked = stream_tokens(engine_model, [prompt], new, window_chunk=C)[0]
    within = BLOCK - P + 1  # steps whose context still fits in block_size
    assert chunked[:within] == exact[:within]
    assert chunked != exact, "with these weights the shorter contexts do change the output"

    keep = BLOCK - C + 1
    seq = list(prompt)
    for step in range(new):
        n = len(seq)
        context_len = n if n <= BLOCK else keep + (n - BLOCK - 1) % C
        seq.append(int(reference_logits(engine_model, seq[-context_len:]).argmax()))
    assert chunked == seq[P:]


# ----------------------------------------------------------------------------- filtering

def test_top_k_keeps_exactly_the_k_largest():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    for k in (1, 5, 17):
        kept = filter_logits(logits, top_k=k)
        for row in range(3):
            values = logits[row].tolist()
            expected = set(sorted(range(50), key=lambda i: -values[i])[:k])
            assert set(torch.isfinite(kept[row]).nonzero().flatten().tolist()) == expected
            torch.testing.assert_close(kept[row][list(expected)], logits[row][list(expected)])
    assert torch.isfinite(filter_logits(logits, top_k=500)).all()  # k > V keeps everything
    assert torch.equal(filter_logits(logits, top_k=0), logits)  # 0 = off


PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]


@pytest.mark.parametrize("top_p, kept", [
    # keep a token when the mass of strictly likelier tokens is < p (the likeliest always stays)
    (0.3, [0.5]),                     # 0 < 0.3; 0.5 >= 0.3
    (0.6, [0.5, 0.2]),                # 0.5 < 0.6; 0.7 >= 0.6
    (0.8, [0.5, 0.2, 0.15]),          # 0.7 < 0.8; 0.85 >= 0.8
    (0.9, [0.5, 0.2, 0.15, 0.1]),     # 0.85 < 0.9; 0.95 >= 0.9
    (0.97, PROBS),                    # 0.95 < 0.97
    (1.0, PROBS),
])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    order = [3, 0, 4, 1, 2]  # shuffled, so the filter has to sort
    probs = torch.tensor([[PROBS[i] for i in order], PROBS])
    out = filter_logits(probs.log(), top_p=top_p)
    for row in range(2):
        survivors = sorted((probs[row][torch.isfinite(out[row])]).tolist(), reverse=True)
        assert survivors == pytest.approx(kept)
    # the kept tokens keep their relative probabilities
    renormalised = torch.softmax(out[1], dim=-1)[:len(kept)]
    torch.testing.assert_close(renormalised, torch.tensor(kept) / sum(kept))


def test_top_k_then_top_p_renormalises_in_between():
    """top_k=3 leaves [0.5, 0.2, 0.15] / 0.85 = [0.588, 0.235, 0.176]; with p=0.8 the third
    token's mass-before is 0.824 >= 0.8, so two stay (on the raw PROBS, p=0.8 keeps three)."""
    out = filter_logits(torch.tensor([PROBS]).log(), top_k=3, top_p=0.8)
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_bad_top_p_is_refused(top_p):
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(torch.zeros(1, 5), top_p=top_p)


def test_temperature_zero_is_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, generator=g) * 0.1  # nearly flat: sampling would rarely be argmax
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(dim=-1))
    assert torch.equal(sample_next(logits, temperature=0, top_k=3, top_p=0.5), logits.argmax(dim=-1))
    assert not torch.equal(sample_next(logits, temperature=1.0, generator=g), logits.argmax(dim=-1))
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1)


def test_sample_frequencies_follow_temperature_and_filters():
    """20,000 draws from PROBS: temperature 2 gives probabilities ∝ sqrt(p); top_p 0.6 gives
    [0.5, 0.2] / 0.7; top_k 2 the same two. Tolerance 0.02 is > 5 standard deviations."""
    logits = torch.tensor(PROBS).log().expand(20000, 5)
    g = torch.Generator().manual_seed(2)

    def freq(**kwargs):
        draws = sample_next(logits, generator=g, **kwargs)
        return (torch.bincount(draws, minlength=5).float() / len(draws)).tolist()

    root = [p ** 0.5 for p in PROBS]
    assert freq(temperature=2.0) == pytest.approx([r / sum(root) for r in root], abs=0.02)
    assert freq(temperature=1.0) == pytest.approx(PROBS, abs=0.02)
    assert freq(temperature=1.0, top_p=0.6) == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], abs=0.02)
    assert freq(temperature=1.0, top_k=2) == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], abs=0.02)


def test_seed_reproduces_a_sample(engine_model):
    prompt = torch.tensor([random_prompt(4, seed=50)])

    def sample(seed):
        torch.manual_seed(seed)
        return engine_model.generate(prompt, 30, temperature=1.5).tolist()

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)

    def sample_with_generator(seed):
        torch.manual_seed(999)  # the global RNG must not matter when a generator is given
        torch.rand(7)
        return engine_model.generate(prompt, 30, temperature=1.5,
                                     generator=torch.Generator().manual_seed(seed)).tolist()

    assert sample_with_generator(3) == sample_with_generator(3)
    assert sample_with_generator(3) != sample_with_generator(4)


# ----------------------------------------------------------------------------- trained models

PATTERN = "hello world\n"
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz .,\n"))  # more than the pattern uses


def continuation(prompt, n):
    """What a model that learned PATTERN writes after `prompt` (a piece of the pattern)."""
    text = PATTERN * (len(prompt) // len(PATTERN) + n // len(PATTERN) + 3)
    phase = (PATTERN * 3).index(prompt[:2 * len(PATTERN)])
    return text[phase + len(prompt): phase + len(prompt) + n]


def train_on_repeats(pattern_ids, vocab_size, steps=250, seed=0):
    """A tiny model trained on random crops of the pattern repeated: every phase at every position."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY, vocab_size=vocab_size))
    data = torch.tensor(pattern_ids * (4 * BLOCK // len(pattern_ids) + 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - BLOCK - 1, (16,), generator=g).tolist()
        x = torch.stack([data[i:i + BLOCK] for i in starts])
        y = torch.stack([data[i + 1:i + 1 + BLOCK] for i in starts])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def write_checkpoint(out_dir, model, meta):
    os.makedirs(out_dir, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": model.config.to_model_args(),
                "iter_num": 0, "best_val_loss": 9.9, "config": {"dataset": "x"}, "meta": meta},
               os.path.join(out_dir, "ckpt.pt"))


@pytest.fixture(scope="module")
def char_model():
    stoi = {c: i for i, c in enumerate(CHARS)}
    return train_on_repeats([stoi[c] for c in PATTERN], len(CHARS)), stoi


@pytest.fixture(scope="module")
def char_ckpt(char_model, tmp_path_factory):
    model, _ = char_model
    out_dir = str(tmp_path_factory.mktemp("char") / "out")
    write_checkpoint(out_dir, model, {"version": 1, "tokenizer": "char", "vocab_size": len(CHARS),
                                      "dtype": "uint16", "chars": CHARS})
    return out_dir


def child_env():
    env = dict(os.environ, PYTHONIOENCODING="utf-8",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return env


def sample_cmd(out_dir, *args):
    return [sys.executable, os.path.join(REPO, "sample.py"), f"--out_dir={out_dir}", "--device=cpu", *args]


def run_sample(out_dir, *args, stdin=None):
    """sample.py in a subprocess, from the checkpoint's folder (nothing is written anywhere)."""
    return subprocess.run(sample_cmd(out_dir, *args), cwd=os.path.dirname(out_dir), input=stdin,
                          capture_output=True, text=True, encoding="utf-8", timeout=120, env=child_env())


def without_config_echo(stdout):
    """configurator.py echoes each --key=value ('Overriding: top_k = 5') to stderr, so that
    stdout holds only the generated text."""
    assert "Overriding" not in stdout, stdout
    return stdout


def ok(result):
    assert result.returncode == 0, result.stderr
    return without_config_echo(result.stdout)


def samples_of(stdout):
    """Non-streamed output: each sample (prompt + text) followed by a line of dashes."""
    parts = stdout.split("\n---------------\n")
    assert parts[-1] == "", repr(stdout)
    return parts[:-1]


def test_the_trained_char_model_writes_the_pattern(char_model):
    """Checks the fixture, in process and without our engine: nanoGPT's loop continues PATTERN."""
    model, stoi = char_model
    for prompt in ["hello", "d\nhel", PATTERN * 2 + "hel"]:
        tokens = reference_greedy(model, [stoi[c] for c in prompt], 30)
        assert "".join(CHARS[t] for t in tokens) == continuation(prompt, 30)


PROMPTS = ["hello", "wor", "ld\nhel", PATTERN * 2 + "hel"]  # the last is longer than block_size


def test_batched_prompts_give_the_text_of_each_prompt_alone(char_ckpt):
    common = ["--temperature=0", "--max_new_tokens=30", "--num_samples=1"]
    batched = samples_of(ok(run_sample(char_ckpt, "--start=" + "|".join(PROMPTS), *common)))
    assert batched == [p + continuation(p, 30) for p in PROMPTS]
    for prompt, text in zip(PROMPTS, batched):
        alone = ok(run_sample(char_ckpt, f"--start={prompt}", *common))  # single sample: streamed
        assert alone == text + "\n"


def test_num_samples_and_no_cache(char_ckpt):
    out = ok(run_sample(char_ckpt, "--start=hello|wor", "--temperature=0", "--max_new_tokens=20",
                        "--num_samples=2", "--use_cache=False"))
    hello, wor = "hello" + continuation("hello", 20), "wor" + continuation("wor", 20)
    assert samples_of(out) == [hello, hello, wor, wor]


def test_stop_string(char_ckpt):
    common = ["--temperature=0", "--max_new_tokens=40", "--num_samples=1"]
    # printed up to, not including, the stop string; streamed and not
    assert ok(run_sample(char_ckpt, "--start=hello", "--stop=wor", *common)) == "hello \n"
    assert samples_of(ok(run_sample(char_ckpt, "--start=hello", "--stop=wor", "--stream=False", *common))) \
        == ["hello "]
    # a stop string inside the prompt doesn't count; the next one in the text does
    assert ok(run_sample(char_ckpt, "--start=hello wor", "--stop=wor", *common)) == "hello world\nhello \n"
    # '\n' typed on a command line is a newline; each row of a batch stops on its own
    out = ok(run_sample(char_ckpt, "--start=hello|wor|h", "--stop=\\n", "--stream=False", *common))
    assert samples_of(out) == ["hello world", "world", "hello world"]
    # a stop string that never appears changes nothing
    out = ok(run_sample(char_ckpt, "--start=hello", "--stop=xyz", *common))
    assert out == "hello" + continuation("hello", 40) + "\n"


def test_streaming_prints_what_non_streaming_prints(char_ckpt):
    common = ["--start=hello", "--max_new_tokens=40", "--num_samples=1", "--temperature=1.0", "--seed=7"]
    streamed = ok(run_sample(char_ckpt, *common))
    assert samples_of(ok(run_sample(char_ckpt, *common, "--stream=False"))) == [streamed[:-1]]
    assert streamed.startswith("hello") and len(streamed) == len("hello") + 40 + 1


def test_prompt_from_a_file(char_ckpt, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("ld\nhello wo", encoding="utf-8")
    out = ok(run_sample(char_ckpt, f"--start=FILE:{prompt_file}", "--temperature=0",
                        "--max_new_tokens=12", "--num_samples=1"))
    assert out == "ld\nhello wo" + continuation("ld\nhello wo", 12) + "\n"
    missing = run_sample(char_ckpt, f"--start=FILE:{tmp_path / 'nope.txt'}", "--num_samples=1")
    assert missing.returncode != 0 and "nope.txt" in missing.stderr and "Traceback" not in missing.stderr


def test_unknown_characters_are_listed_in_one_line(char_ckpt):
    result = run_sample(char_ckpt, "--start=hello|Wörld!", "--max_new_tokens=5")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(repr(c) in lines[0] for c in "Wö!") and "'l'" not in lines[0]
    assert without_config_echo(result.stdout) == ""  # nothing generated for the good prompt either


@pytest.mark.parametrize("arg, message", [("--temperature=-1", "temperature"), ("--top_p=0", "top_p"),
                                          ("--top_p=1.5", "top_p"), ("--num_samples=0", "num_samples")])
def test_bad_sampling_settings_are_one_line_errors(char_ckpt, arg, message):
    result = run_sample(char_ckpt, "--start=hello", arg)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_interactive_session(char_ckpt):
    stdin = "\n".join([
        "hello",                  # sampled at the default temperature
        "/temperature 0",
        "/settings",
        "hello wor",              # greedy: the pattern
        "/temperature -2",        # refused, temperature stays 0
        "Wörld",                  # not in the vocabulary: an error, the loop goes on
        "ld\\",                   # a line ending in a backslash continues the prompt
        "hel",
        "/num_samples 2",         # two samples, printed when done
        "wor",
        "/top_p 0.5",
        "/bogus",
        "/quit",
        "never read",
    ]) + "\n"
    out = ok(run_sample(char_ckpt, "--interactive=True", "--max_new_tokens=15", stdin=stdin))
    assert "temperature = 0.0" in out
    assert "temperature=0.0" in out  # /settings
    assert "hello wor" + continuation("hello wor", 15) + "\n" in out
    assert "temperature must be >= 0" in out
    assert "'ö'" in out
    assert "ld\nhel" + continuation("ld\nhel", 15) + "\n" in out
    two = "wor" + continuation("wor", 15) + "\n---------------\n"
    assert two * 2 in out and out.count(two) == 2
    assert "top_p = 0.5" in out and "unknown command /bogus" in out
    assert "never read" not in out


def test_interactive_end_of_input_exits_cleanly(char_ckpt):
    """Ctrl+D is the end of stdin: at an empty prompt it leaves (exit 0); a last line without a
    newline is still a prompt (`printf 'wor' | python sample.py --interactive=True`)."""
    args = ["--interactive=True", "--temperature=0", "--max_new_tokens=12"]
    out = ok(run_sample(char_ckpt, *args, stdin=""))
    assert out.startswith("interactive mode") and "---" not in out
    out = ok(run_sample(char_ckpt, *args, stdin="wor\nhel"))
    assert "wor" + continuation("wor", 12) + "\n" in out
    assert "hel" + continuation("hel", 12) + "\n" in out


def test_interactive_ctrl_c_stops_the_generation_not_the_loop(char_ckpt):
    cmd = sample_cmd(char_ckpt, "--interactive=True", "--temperature=0", "--max_new_tokens=1000000")
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(char_ckpt), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        seen, deadline = b"", time.time() + 60
        while seen.count(b"world") < 3:  # the generation is under way
            assert time.time() < deadline, seen[-300:]
            if select.select([proc.stdout], [], [], 1.0)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(b"/max_new_tokens 30\nhel\n/quit\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (seen + out).decode("utf-8")
    assert proc.returncode == 0, err.decode("utf-8")
    assert "(generation stopped)" in out
    assert out.count("hello world") < 100_000  # stopped long before max_new_tokens
    assert "hel" + continuation("hel", 30) in out.split("(generation stopped)")[1]


def test_ctrl_c_stops_a_sample_with_one_line(char_ckpt):
    """Ctrl+C during a long generation: no traceback, one line saying so, and the exit status
    of an interrupt (a shell loop around sample.py stops too)."""
    cmd = sample_cmd(char_ckpt, "--temperature=0", "--max_new_tokens=1000000", "--start=wor",
                     "--num_samples=1")  # one sample streams
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(char_ckpt), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env())
    try:
        seen, deadline = b"", time.time() + 60
        while len(seen) < 200:  # the generation is under way
            assert time.time() < deadline and proc.poll() is None, seen[-300:]
            if select.select([proc.stdout], [], [], 1.0)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err.decode("utf-8")
    assert proc.returncode == -signal.SIGINT, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted", err


# ----------------------------------------------------------------------------- GPT-2 BPE

BPE_TEXT = "hello world 日本"  # 日本 is split over BPE tokens that are not whole characters


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory):
    """A GPT-2-vocabulary model that writes 'hello world 日本<|endoftext|>' forever. Training
    with 50,257 outputs is slow on a CPU, so we train on the 8 token ids the pattern uses plus
    one never-seen id, then copy each learned row to its GPT-2 id and the never-seen row to the
    other 50,248: their logits are all the never-seen token's, which training pushed down."""
    skip_without_gpt2_bpe()
    from smallgpt.tokenizer import Tokenizer
    tokenizer = Tokenizer.tiktoken("gpt2")
    pattern = tokenizer.encode(BPE_TEXT) + [tokenizer.eot_token]
    assert any("\ufffd" in tokenizer.decode([t]) for t in pattern), "want a split character"
    ids = sorted(set(pattern))
    small = train_on_repeats([ids.index(t) for t in pattern], len(ids) + 1)
    model = GPT(GPTConfig(**TINY, vocab_size=tokenizer.vocab_size)).eval()
    state = small.state_dict()
    wte = state["transformer.wte.weight"][-1].repeat(tokenizer.vocab_size, 1)
    wte[ids] = state["transformer.wte.weight"][:-1]
    state["transformer.wte.weight"] = state["lm_head.weight"] = wte
    model.load_state_dict(state)
    # the fixture itself, checked with nanoGPT's loop: it continues the pattern
    start = tokenizer.encode("hello")
    assert reference_greedy(model, start, 20) == (pattern * 4)[1:21]
    out_dir = str(tmp_path_factory.mktemp("bpe") / "out")
    write_checkpoint(out_dir, model, {"version": 1, "tokenizer": "tiktoken", "encoding": "gpt2",
                                      "vocab_size": tokenizer.vocab_size, "dtype": "uint16"})
    return out_dir, tokenizer, pattern


@needs_gpt2_bpe
def test_stop_at_end_of_text(bpe_ckpt):
    out_dir, _, _ = bpe_ckpt
    common = ["--temperature=0", "--max_new_tokens=30", "--num_samples=1", "--stop_at_eot=True"]
    assert ok(run_sample(out_dir, "--start=hello", *common)) == BPE_TEXT + "\n"
    # '<|endoftext|>' as the whole prompt is the token itself: a fresh document
    assert ok(run_sample(out_dir, "--start=<|endoftext|>", *common)) == "<|endoftext|>" + BPE_TEXT + "\n"
    # inside a prompt too (nanoGPT encodes it as the special token), and '|' doesn't split it
    out = ok(run_sample(out_dir, "--start=<|endoftext|>hello|hello world 日本<|endoftext|>", *common))
    assert samples_of(out) == ["<|endoftext|>" + BPE_TEXT, "hello world 日本<|endoftext|>" + BPE_TEXT]
    # in a batch each row stops at its own end of text
    out = ok(run_sample(out_dir, "--start=hello| world", *common))
    assert samples_of(out) == [BPE_TEXT, BPE_TEXT[len("hello"):]]


@needs_gpt2_bpe
@pytest.mark.parametrize("stream", [True, False])
def test_multibyte_characters_stream_whole(bpe_ckpt, stream):
    """12 tokens after 'hello' end right after 日: the stream must show 日 and 本, never U+FFFD,
    and print exactly tokenizer.decode of all the tokens (the EOT token included as text)."""
    out_dir, tokenizer, pattern = bpe_ckpt
    new = 12
    expected = tokenizer.decode(pattern[:1] + (pattern * 3)[1:1 + new])
    assert expected == "hello" + " world 日本<|endoftext|>hello world 日"
    out = ok(run_sample(out_dir, "--start=hello", "--temperature=0", f"--max_new_tokens={new}",
                        "--num_samples=1", f"--stream={stream}"))
    assert (out == expected + "\n") if stream else (samples_of(out) == [expected])
