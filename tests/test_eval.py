"""
Evaluation: accuracy (smallgpt/metrics.py), eval.py's loss / perplexity / bits per byte, and the
accuracy column of the run log.

    python -m pytest tests/test_eval.py -q        # about 30 s on 2 cores

The models are tiny and random (or built by hand to predict one token), saved as checkpoints in a
temp folder; the references are computed here from the text, window by window or token by
token, with plain forward passes, or by Hugging Face transformers on the exported model.
"""

import contextlib
import csv
import io
import json
import math
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import REPO, error_lines, randomize_weights, run_script

from smallgpt.checkpoint import save_checkpoint  # noqa: E402  (conftest put the repo on sys.path)
from smallgpt.metrics import greedy_answers, line_accuracy, score_answers, split_answer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from smallgpt.runlog import RunLog  # noqa: E402
from smallgpt.tokenizer import Tokenizer  # noqa: E402
from smallgpt.prepare import prepare_char  # noqa: E402

# multi-byte characters (2, 3 and 4 UTF-8 bytes), so bytes and tokens differ
TEXT = "".join(f"Señor {w} paid {n} € at the café 🙂.\n" for n in range(60)
               for w in ("Quixote", "Panza", "Sancho")[n % 3:n % 3 + 1])
BLOCK = 16


def run_in_process(script, *args, cwd):
    """`python SCRIPT ARGS` from cwd, run in this process (runpy) to skip a second torch import:
    a CompletedProcess-like (returncode, stdout, stderr)."""
    argv, here = sys.argv, os.getcwd()
    sys.argv = [str(REPO / script), *map(str, args)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def run_eval(*args, cwd):
    return run_in_process("eval.py", "--device=cpu", *args, cwd=cwd)


def eval_json(*args, cwd):
    result = run_eval(*args, "--json=True", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # the whole of stdout is one JSON object


def save_model(model, meta, out_dir, **config):
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "model_args": model.config.to_model_args(),
                     "meta": meta, "config": config, "iter_num": 0, "best_val_loss": 0.0},
                    os.path.join(out_dir, "ckpt.pt"))


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A prepared char dataset of TEXT and a random tiny model saved as out/ckpt.pt."""
    root = tmp_path_factory.mktemp("evalrun")
    (root / "input.txt").write_text(TEXT, encoding="utf-8")
    (root / "data").mkdir()
    prepare_char(str(root / "data"), None, [f"--input={root / 'input.txt'}"])
    meta = json.loads((root / "data" / "meta.json").read_text(encoding="utf-8"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK,
                          vocab_size=meta["vocab_size"], dropout=0.0))
    randomize_weights(model, std=0.1).eval()
    save_model(model, meta, root / "out", dataset=str(root / "data"))
    ids = np.fromfile(root / "data" / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    return root, model, meta, ids


def window_nll(model, ids, start, length):
    """Per-prediction cross-entropy (nats) of one window: inputs ids[start:start+length]."""
    x = torch.tensor(ids[start:start + length])[None]
    y = torch.tensor(ids[start + 1:start + length + 1])
    with torch.no_grad():
        logits, _ = model(x, all_logits=True)
    return F.cross_entropy(logits[0], y, reduction="none")  # (length,)


# ----------------------------------------------------------------------------- accuracy by hand


def test_accuracy_of_hand_made_predictions():
    expected = ["46", "18", "7", ""]
    predicted = ["46", "81", "", ""]  # right, wrong, an empty answer (wrong), empty and right
    assert score_answers(expected, predicted) == [True, False, False, True]
    assert score_answers(["46"], [None]) == [False]  # never ended its line
    assert split_answer("12+34=46", "=") == ("12+34=", "46")
    assert split_answer("a=b=c", "=") == ("a=", "b=c")  # the first separator ends the question
    with pytest.raises(ValueError, match="no answer separator"):
        split_answer("1234", "=")


class HandMadeModel(torch.nn.Module):
    """Answers each prompt with a continuation written by hand (looked up by the prompt's text),
    through the same generate_stream interface as GPT: rows of a batch together, one token a step."""

    def __init__(self, tokenizer, continuations):
        super().__init__()
        self.tokenizer, self.continuations = tokenizer, continuations
        self.calls = []

    def generate_stream(self, prompts, max_new_tokens, temperature=1.0, **kwargs):
        assert temperature == 0, "accuracy must decode greedily"
        self.calls.append((len(prompts), max_new_tokens))
        rows = [self.tokenizer.encode(self.continuations[self.tokenizer.decode(p)]) for p in prompts]
        for step in range(max_new_tokens):
            yield torch.tensor([row[step] if step < len(row) else row[-1] for row in rows])


def test_line_accuracy_with_hand_made_answers():
    chars = sorted(set("0123456789+=\n"))
    tokenizer = Tokenizer("char", len(chars), chars=chars)
    lines = ["12+34=46", "9+9=18", "5+5=10", "1+1=2", "50+50=100"]
    model = HandMadeModel(tokenizer, {
        "12+34=": "46\n7",    # right; what follows the end of line does not count
        "9+9=": "81\n",       # wrong
        "5+5=": "\n",         # an empty answer: wrong
        "1+1=": "22\n",       # no end of line within 1 + 1 tokens: wrong, and not decoded further
        "50+50=": "100\n",    # right, in the second batch
    })
    result = line_accuracy(model, tokenizer, lines, "=", batch_size=4)
    assert result["predictions"] == ["46", "81", "", None, "100"]
    assert result["accuracy"] == 2 / 5 and result["correct"] == 2 and result["lines"] == 5
    # two batches; each may generate its longest answer plus the end of line, no more
    assert model.calls == [(4, 3), (1, 4)]


def test_batched_cached_answers_equal_greedy_decoding_one_line_at_a_time():
    """greedy_answers runs rows of different lengths together through the KV cache (left-padded);
    the reference decodes each prompt alone, with a full forward per token and no cache."""
    chars = sorted(set("0123456789+=\n"))
    tokenizer = Tokenizer("char", len(chars), chars=chars)
    eol = chars.index("\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=len(chars)))
    randomize_weights(model, seed=2).eval()
    with torch.no_grad():
        model.transformer.wte.weight[eol] *= 1.5  # the end of line comes sooner: after 1 to 4 tokens
    prompts = [f"{a}+{b}=" for a, b in [(1, 2), (12, 34), (123, 4), (7, 77), (99, 1), (5, 550),
                                         (0, 0), (31, 8), (400, 22), (6, 6)]]
    budget = 6

    def reference(prompt):
        ids = tokenizer.encode(prompt)
        out = []
        for _ in range(budget):
            with torch.no_grad():
                token = int(model(torch.tensor([ids]))[0][0, -1].argmax())
            if token == eol:
                return tokenizer.decode(out)
            out.append(token)
            ids.append(token)
        return None

    expected = [reference(p) for p in prompts]
    assert greedy_answers(model, tokenizer, prompts, [budget] * len(prompts), eol, batch_size=4) == expected
    # the comparison means something: some rows end early, at different lengths, some never
    lengths = {len(e) for e in expected if e is not None}
    assert None in expected and len(lengths) >= 2, expected


# ----------------------------------------------------------------------------- eval.py


def test_eval_loss_is_the_mean_of_window_losses(char_run):
    root, model, meta, ids = char_run
    # three whole windows: the loss is the plain mean of the three windows' mean losses
    result = eval_json("--out_dir=out", "--max_windows=3", cwd=root)
    per_window = [window_nll(model, ids, k * BLOCK, BLOCK).mean().item() for k in range(3)]
    assert result["tokens"] == 3 * BLOCK
    assert result["loss"] == pytest.approx(sum(per_window) / 3, rel=1e-5)

    # the whole split: windows side by side, the last one shorter; every token after the first
    # is scored once, so the mean weighs each window by its tokens
    result = eval_json("--out_dir=out", "--split=val", cwd=root)
    nll = torch.cat([window_nll(model, ids, s, min(BLOCK, len(ids) - 1 - s))
                     for s in range(0, len(ids) - 1, BLOCK)])
    assert (len(ids) - 1) % BLOCK != 0, "the test needs a short last window"
    assert result["tokens"] == len(nll) == len(ids) - 1
    assert result["loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    # bits per byte from the same numbers: the bytes are those of the text the tokens spell
    text = "".join(meta["chars"][i] for i in ids[1:])
    assert result["bytes"] == len(text.encode("utf-8")) > len(text)
    assert result["bits_per_byte"] == pytest.approx(nll.sum().item() / math.log(2) / result["bytes"],
                                                    rel=1e-5)


def test_eval_stride_scores_each_token_once_with_more_context(char_run):
    """--stride=5: token j is scored by the first window (starts 0, 5, 10, ...) that reaches it,
    i.e. with the context that window gives; computed here token by token."""
    root, model, meta, ids = char_run
    stride = 5
    result = eval_json("--out_dir=out", "--stride=5", cwd=root)
    total, cache = 0.0, {}
    for j in range(1, len(ids)):
        k = max(0, -(-(j - BLOCK) // stride))  # the first window k with k * stride + BLOCK >= j
        start = k * stride
        if start not in cache:
            cache[start] = window_nll(model, ids, start, min(BLOCK, len(ids) - 1 - start))
        total += cache[start][j - 1 - start].item()
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    side_by_side = eval_json("--out_dir=out", cwd=root)
    assert result["loss"] != pytest.approx(side_by_side["loss"], rel=1e-3)  # the context changed it


def test_eval_text_file_equals_the_same_text_as_a_split(char_run, tmp_path):
    root, model, meta, ids = char_run
    (tmp_path / "val.txt").write_text("".join(meta["chars"][i] for i in ids), encoding="utf-8")
    from_text = eval_json("--out_dir=" + str(root / "out"), f"--text={tmp_path / 'val.txt'}", cwd=tmp_path)
    from_split = eval_json("--out_dir=out", "--split=val", cwd=root)
    assert set(from_text) >= {"loss", "perplexity", "bits_per_byte", "tokens"}
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes"):
        assert from_text[key] == pytest.approx(from_split[key], rel=1e-6), key


def test_transformers_gives_the_same_loss_on_the_same_windows(char_run, tmp_path):
    """The model exported with smallgpt.hf.convert.save_hf, loaded by AutoModelForCausalLM, scores the
    windows eval.py reads (side by side) to the same mean loss."""
    transformers = pytest.importorskip("transformers")
    import smallgpt.hf.convert

    root, model, meta, ids = char_run
    smallgpt.hf.convert.save_hf(model, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, BLOCK):
        length = min(BLOCK, len(ids) - 1 - start)
        x = torch.tensor(ids[start:start + length])[None]
        y = torch.tensor(ids[start + 1:start + length + 1])
        with torch.no_grad():
            logits = hf(x).logits[0]
        total += F.cross_entropy(logits.float(), y, reduction="sum").item()
        count += length
    result = eval_json("--out_dir=out", cwd=root)
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


def test_eval_text_report_and_one_line_errors(char_run, tmp_path):
    root, model, meta, ids = char_run
    result = run_script("eval.py", "--device=cpu", "--out_dir=out", cwd=root)  # a real process
    assert result.returncode == 0, result.stderr
    assert "loss " in result.stdout and "bits per byte" in result.stdout and "windows of 16" in result.stdout
    for args, message in [
        (["--split=test"], f"error: dataset '{root / 'data'}' has no test split (only line datasets "
                           f"have one); use --split=val"),
        (["--dataset=nothing_here"], f"error: dataset 'nothing_here' has no val.bin in "
                                     f"{os.path.join(REPO, 'data', 'nothing_here')}; prepare it first "
                                     f"(ls data/ lists the datasets that ship a prepare.py)"),
        (["--text=missing.txt"], "error: --text file not found: missing.txt"),
        (["--stride=17"], "error: stride=17 must be in [1, block_size=16]: a longer stride would skip tokens"),
    ]:
        bad = run_eval("--out_dir=out", *args, cwd=root)
        assert bad.returncode != 0 and error_lines(bad.stderr) == [message], bad.stderr
    (tmp_path / "other.txt").write_text("Zorro ÿ", encoding="utf-8")
    bad = run_eval(f"--out_dir={root / 'out'}", f"--text={tmp_path / 'other.txt'}", cwd=tmp_path)
    assert bad.returncode != 0 and len(error_lines(bad.stderr)) == 1
    assert "the text has characters not in the vocabulary: 'Z', 'ÿ'" in bad.stderr


def test_eval_on_a_line_dataset_reports_loss_over_lines_and_accuracy(tmp_path):
    lines = [f"{a}+{b}={a + b}" for a in range(12) for b in range(12)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_in_process("data/charline/prepare.py", f"--input={tmp_path / 'lines.txt'}",
                            f"--dataset={tmp_path / 'add'}", "--answer_separator==", "--shuffle",
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "add" / "meta.json").read_text(encoding="utf-8"))
    chars = meta["chars"]
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=len(chars)))
    randomize_weights(model, seed=1, std=0.2).eval()
    save_model(model, meta, tmp_path / "out", dataset=str(tmp_path / "add"), loss_on="answer",
               answer_separator="")
    got = eval_json("--out_dir=out", "--split=test", cwd=tmp_path)

    ids = np.fromfile(tmp_path / "add" / "test.bin", dtype=meta["dtype"])
    test_lines = "".join(chars[i] for i in ids).split("\n")[:-1]
    total, count, right = 0.0, 0, 0
    for line in test_lines:  # one window per line, the answer and its end of line are scored
        x = torch.tensor([chars.index(c) for c in line])[None]
        y = torch.tensor([chars.index(c) for c in line[1:] + "\n"])
        with torch.no_grad():
            nll = F.cross_entropy(model(x, all_logits=True)[0][0], y, reduction="none")
        total += nll[line.index("="):].sum().item()
        count += len(line) - line.index("=")
        prompt, answer = line.split("=")
        generated = [chars.index(c) for c in prompt + "="]
        for _ in range(len(answer) + 1):  # greedy, no cache: the answer and its end of line
            with torch.no_grad():
                generated.append(int(model(torch.tensor([generated]))[0][0, -1].argmax()))
        right += "".join(chars[i] for i in generated[len(prompt) + 1:]) == answer + "\n"
    assert got["tokens"] == count and got["loss_on"] == "answer"
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["accuracy"] == right / len(test_lines) and got["correct"] == right


# ----------------------------------------------------------------------------- accuracy in the run log


def test_run_log_keeps_accuracy_in_csv_png_and_tensorboard(tmp_path):
    log = RunLog(str(tmp_path), {"dataset": "add"})
    log.eval(0, 2.5, 2.6, 1e-3, 0.0)
    log.eval(100, 0.5, 0.6, 1e-3, 0.875)
    log.eval(200, 0.4, 0.5, 1e-3)  # a run without accuracy leaves the cell empty
    log.close()
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["accuracy"] for r in rows] == ["0", "0.875", ""]
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = RunLog(str(tmp_path / "tb"), {}, tensorboard=True, plot=False)
    log.eval(100, 0.5, 0.6, 1e-3, 0.875)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(100, 0.875)]


# ----------------------------------------------------------------------------- sample.py


def test_sample_stops_at_the_end_of_the_line_on_a_line_dataset(tmp_path):
    """A model built to predict the end of line after anything: sample.py prints the prompt's
    line and stops there; --stop_at_line_end=False keeps going for max_new_tokens."""
    lines = [f"{a}*{b}={a * b}" for a in range(10) for b in range(10)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert run_in_process("data/charline/prepare.py", f"--input={tmp_path / 'lines.txt'}",
                          f"--dataset={tmp_path / 'mul'}", cwd=tmp_path).returncode == 0
    meta = json.loads((tmp_path / "mul" / "meta.json").read_text(encoding="utf-8"))
    eol = meta["chars"].index("\n")
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=meta["vocab_size"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "transformer.wte.weight":
                p.zero_()  # blocks add nothing, ln_f outputs its bias alone
        model.transformer.wte.weight[eol] *= 10  # the longest row: the top logit for any input
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[eol])
    save_model(model, meta, tmp_path / "out", dataset=str(tmp_path / "mul"))
    common = ["sample.py", "--out_dir=out", "--device=cpu", "--start=3*4=", "--temperature=0",
              "--num_samples=1", "--max_new_tokens=4"]
    stopped = run_in_process(*common, cwd=tmp_path)
    going_on = run_in_process(*common, "--stop_at_line_end=False", cwd=tmp_path)
    assert stopped.returncode == 0 and going_on.returncode == 0, stopped.stderr + going_on.stderr
    assert stopped.stdout == "3*4=\n"  # the line, then print's own newline
    assert going_on.stdout == "3*4=" + "\n" * 4 + "\n"
