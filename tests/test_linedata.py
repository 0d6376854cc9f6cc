"""
Line datasets (smallgpt/lines.py, data/charline, data/add, data/roman) and training on them (train.py).

    python -m pytest tests/test_linedata.py -q        # about 30 s on 2 cores

Expected values come from the text the test writes (its lines, their characters), from Python's
own arithmetic, or from an independent roman numeral reader; never from the code under test.
"""

import contextlib
import csv
import io
import json
import os
import re
import runpy
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import REPO, error_lines, run_train

from smallgpt.lines import LineDataset  # noqa: E402  (conftest put the repo on sys.path)
from model import GPT, GPTConfig  # noqa: E402
from smallgpt.dataloader import load_meta  # noqa: E402

LINES = [f"{a}*{b}={a * b}" for a in range(3, 40) for b in range(2, 9)]  # 259 distinct lines


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def prepare(script, *args, cwd):
    """`python SCRIPT ARGS` from cwd, in this process (runpy: a prepare script is quick, the
    interpreter start is not); returns what it printed."""
    argv, here = sys.argv, os.getcwd()
    sys.argv = [str(REPO / script), *map(str, args)]
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            runpy.run_path(str(REPO / script), run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(here)
    return out.getvalue()


def split_lines(folder, split):
    """The lines of a split, read back from the .bin with meta.json's chars: no linedata code."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    ids = np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"])
    text = "".join(meta["chars"][i] for i in ids)
    assert text == "" or text.endswith("\n"), f"{split}.bin does not end with an end of line"
    return text.split("\n")[:-1]


def encode(folder, text):
    chars = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["chars"]
    return [chars.index(c) for c in text]


@pytest.fixture(scope="module")
def lines_dataset(tmp_path_factory):
    """LINES prepared by data/charline/prepare.py into a temp folder, with '=' as separator."""
    root = tmp_path_factory.mktemp("lines")
    source = write_lines(root / "lines.txt", LINES)
    prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={root / 'mul'}",
            "--answer_separator==", "--shuffle", cwd=root)
    return root / "mul"


# ----------------------------------------------------------------------------- prepare


def test_charline_splits_by_lines_in_file_order(tmp_path):
    # an empty line and a repeat: both dropped, so every split holds distinct, whole lines
    text_lines = LINES[:50] + [""] + LINES[50:] + [LINES[3]]
    source = write_lines(tmp_path / "lines.txt", text_lines)
    result = prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={tmp_path / 'd'}",
                     cwd=tmp_path)
    assert "dropped 1 empty line(s) and 1 repeated line(s)" in result
    folder = tmp_path / "d"
    splits = {s: split_lines(folder, s) for s in ("train", "val", "test")}
    n = len(LINES)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [n - 2 * round(n / 10), round(n / 10),
                                                                 round(n / 10)]
    assert splits["train"] + splits["val"] + splits["test"] == LINES  # no --shuffle: file order

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["chars"] == sorted(set("".join(LINES)) | {"\n"})  # the end of line is a token
    assert meta["lines"]["end_of_line"] == "\n" and meta["lines"]["answer_separator"] is None
    longest = max(LINES, key=len)
    assert meta["lines"]["longest"]["characters"] == len(longest)
    assert meta["lines"]["longest"]["line"] == text_lines.index(longest) + 1  # its line in the file
    for split in ("train", "val", "test"):
        assert meta[f"{split}_tokens"] == sum(len(line) + 1 for line in splits[split])
        assert meta["lines"][f"{split}_lines"] == len(splits[split])


def test_charline_shuffle_is_seeded_and_no_line_is_in_two_splits(tmp_path):
    source = write_lines(tmp_path / "lines.txt", LINES)
    got = {}
    for seed in (1, 1, 2):
        folder = tmp_path / f"s{seed}"
        prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={folder}", "--shuffle",
                f"--seed={seed}", cwd=tmp_path)
        splits = [split_lines(folder, s) for s in ("train", "val", "test")]
        assert sorted(sum(splits, [])) == sorted(LINES)
        assert len(set(splits[0]) | set(splits[1]) | set(splits[2])) == len(LINES)  # disjoint
        got.setdefault(seed, []).append(splits)
    assert got[1][0] == got[1][1], "the same seed must give the same splits"
    assert got[1][0] != got[2][0] and got[1][0][0] != LINES[:len(got[1][0][0])]


def test_addition_task_is_correct_and_splits_never_share_a_problem(tmp_path):
    prepare("data/add/prepare.py", "--digits=2", f"--dataset={tmp_path / 'add'}", cwd=tmp_path)
    prepare("data/add/prepare.py", "--digits=2", "--reverse", f"--dataset={tmp_path / 'rev'}",
            cwd=tmp_path)
    splits = [split_lines(tmp_path / "add", s) for s in ("train", "val", "test")]
    assert [len(s) for s in splits] == [8000, 1000, 1000]
    everything = sum(splits, [])
    problems = [line.split("=")[0] for line in everything]
    assert len(set(problems)) == 10_000 == len(problems)  # each pair once, in one split only
    assert {(int(a), int(b)) for a, b in (p.split("+") for p in problems)} == \
        {(a, b) for a in range(100) for b in range(100)}
    for line in everything:
        question, answer = line.split("=")
        a, b = question.split("+")
        assert int(answer) == int(a) + int(b), line
    reversed_lines = sum((split_lines(tmp_path / "rev", s) for s in ("train", "val", "test")), [])
    assert reversed_lines[:50] == [p + "=" + str(eval(p))[::-1] for p in problems[:50]]  # same seed
    meta = load_meta(str(tmp_path / "add"))
    assert meta["lines"]["answer_separator"] == "="


ROMAN = re.compile(r"^M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$")  # canonical form
VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}


def roman_value(numeral):
    """A letter before a larger one is subtracted (IV = 4), else added."""
    values = [VALUES[c] for c in numeral]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def test_roman_task_is_correct_and_splits_never_share_a_number(tmp_path):
    prepare("data/roman/prepare.py", f"--dataset={tmp_path / 'roman'}", cwd=tmp_path)
    splits = [split_lines(tmp_path / "roman", s) for s in ("train", "val", "test")]
    everything = sum(splits, [])
    numbers = [int(line.split("=")[0]) for line in everything]
    assert sorted(numbers) == list(range(1, 4000))
    assert not set(splits[0]) & set(splits[1]) and not set(splits[0]) & set(splits[2])
    for line in everything:
        number, numeral = line.split("=")
        assert ROMAN.match(numeral) and roman_value(numeral) == int(number), line
    assert {"1994=MCMXCIV", "3999=MMMCMXCIX", "4=IV", "40=XL", "2024=MMXXIV"} <= set(everything)


# ----------------------------------------------------------------------------- batches


def expected_row(folder, line, block_size, answer_only=False):
    """x, y of one window built from the line's text: its characters, padded with the end of
    line; targets the next characters then -1 (and -1 up to the '=' when answer_only)."""
    ids = encode(folder, line + "\n")
    eol = encode(folder, "\n")[0]
    n = len(line)
    x = ids[:-1] + [eol] * (block_size - n)
    y = ids[1:] + [-1] * (block_size - n)
    if answer_only:
        y = [-1 if j + 1 <= line.index("=") else t for j, t in enumerate(y)]
    return x, y


@pytest.mark.parametrize("loss_on", ["all", "answer"])
def test_each_window_is_one_line_from_its_start_and_padding_is_never_a_target(lines_dataset, loss_on):
    data = LineDataset(str(lines_dataset), load_meta(str(lines_dataset)))
    data.set_targets(loss_on)
    train_lines = split_lines(lines_dataset, "train")
    block_size = 12
    x, y = data.batch("train", 64, block_size, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, block_size) and x.dtype == y.dtype == torch.int64
    windows = {}  # every line's window, built from its text
    for line in train_lines:
        row_x, row_y = expected_row(lines_dataset, line, block_size, loss_on == "answer")
        windows[tuple(row_x + row_y)] = line
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        # the row is exactly the window of one line, from its start
        assert tuple(row_x + row_y) in windows, f"row {row_x} is not the window of a line from its start"
    # hand-picked lines by index, too (what evaluation uses)
    x, y = data.batch("train", None, block_size, line_indices=[0, 5, 5])
    for row, i in enumerate([0, 5, 5]):
        assert (x[row].tolist(), y[row].tolist()) == \
            expected_row(lines_dataset, train_lines[i], block_size, loss_on == "answer")
    if loss_on == "answer":  # '3*4=12' learns '1', '2' and the end of line, nothing else
        targets = (y >= 0).sum(dim=1).tolist()
        assert targets == [len(train_lines[i]) - train_lines[i].index("=") for i in (0, 5, 5)]


def test_padding_inputs_do_not_change_the_loss(lines_dataset):
    """Padding sits after every real token of a window, so a causal model never sees it: the
    loss is the same whatever the pad inputs are (and the targets there are -1)."""
    data = LineDataset(str(lines_dataset), load_meta(str(lines_dataset)))
    data.set_targets("all")
    x, y = data.batch("val", 8, 16, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=data.tokenizer.vocab_size))
    _, loss = model(x, y)
    scrambled = torch.where(y >= 0, x, torch.randint_like(x, data.tokenizer.vocab_size))
    scrambled[:, 0] = x[:, 0]
    _, loss_scrambled = model(scrambled, y)
    assert torch.equal(loss, loss_scrambled)
    assert (scrambled != x).any()


def test_line_without_separator_is_named(tmp_path):
    source = write_lines(tmp_path / "lines.txt", LINES[:40] + ["no separator here"] + LINES[40:])
    prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={tmp_path / 'd'}", cwd=tmp_path)
    data = LineDataset(str(tmp_path / "d"), load_meta(str(tmp_path / "d")))
    with pytest.raises(ValueError, match=r"line 41 of the train split has no answer separator '=': "
                                         r"'no separator here'"):
        data.set_targets("answer", "=")


def test_prepare_refuses_a_line_without_the_separator_and_an_empty_split(tmp_path):
    source = write_lines(tmp_path / "lines.txt", LINES[:40] + ["no separator here"] + LINES[40:])
    with pytest.raises(SystemExit, match=r"^error: line 41 of .*lines.txt has no answer separator '=': "
                                         r"'no separator here'; fix the line, or leave out --answer_separator$"):
        prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={tmp_path / 'd'}",
                "--answer_separator==", cwd=tmp_path)
    assert not (tmp_path / "d" / "train.bin").exists()
    prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={tmp_path / 'e'}",
            "--test_fraction=0", cwd=tmp_path)
    assert (tmp_path / "e" / "test.bin").stat().st_size == 0
    with pytest.raises(ValueError, match=r"the test split of .* has no lines; prepare it again with "
                                         r"a test_fraction above 0"):
        LineDataset(str(tmp_path / "e"), load_meta(str(tmp_path / "e")))


# ----------------------------------------------------------------------------- train.py


def test_line_longer_than_block_size_is_one_line_error_naming_it(tmp_path):
    long_line = "3*4=" + "1" * 40
    source = write_lines(tmp_path / "lines.txt", LINES[:7] + [long_line] + LINES[7:])
    prepare("data/charline/prepare.py", f"--input={source}", f"--dataset={tmp_path / 'd'}", cwd=tmp_path)
    result = run_train(tmp_path / "d", tmp_path / "out", "--max_iters=1", cwd=tmp_path)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: 1 line(s) longer than block_size=32: the longest is line 8 of ")
    assert f"(44 characters: {long_line!r}); use --block_size=44" in lines[0]
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_line_settings_on_a_plain_dataset_are_refused(char_dataset, tmp_path):
    result = run_train(char_dataset, tmp_path / "out", "--loss_on=answer", "--max_iters=1", cwd=tmp_path)
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        f"error: loss_on, answer_separator and eval_accuracy work on line datasets, and "
        f"'{char_dataset}' is plain text; make one with: python data/charline/prepare.py --input=lines.txt"]


def test_eval_uses_the_same_line_windows(lines_dataset, tmp_path):
    """The logged val loss at the last eval equals the mean loss of eval_iters batches of line
    windows, built here from the text: lines spread evenly over the split, answers only."""
    out_dir = tmp_path / "out"
    result = run_train(lines_dataset, out_dir, "--max_iters=10", "--eval_interval=10", "--block_size=12",
                       "--loss_on=answer", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ckpt = torch.load(out_dir / "last.pt", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    val = split_lines(lines_dataset, "val")
    eval_iters, batch_size = 2, 4  # conftest.TINY
    picks = np.linspace(0, len(val) - 1, eval_iters * batch_size).astype(int)
    losses = []
    for b in range(eval_iters):
        rows = [expected_row(lines_dataset, val[i], 12, answer_only=True)
                for i in picks[b * batch_size:(b + 1) * batch_size]]
        x, y = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
        with torch.no_grad():
            logits, _ = model(x, all_logits=True)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                      ignore_index=-1).item())
    with open(out_dir / "log.csv", newline="") as f:
        last_eval = [r for r in csv.DictReader(f) if r["kind"] == "eval"][-1]
    assert int(last_eval["iter"]) == 10
    assert float(last_eval["val_loss"]) == pytest.approx(sum(losses) / len(losses), rel=2e-6)


def test_resume_on_a_line_dataset_is_exact(lines_dataset, tmp_path):
    """6 iterations, stop, resume from last.pt for 6 more: the same losses as 12 in one go
    (the line sampler's generator state travels in the checkpoint)."""
    common = ["--block_size=12", "--loss_on=answer", "--eval_interval=6", "--dropout=0.1"]

    def losses(stdout):
        return re.findall(r"^iter (\d+): loss (\S+),", stdout, flags=re.M)

    whole = run_train(lines_dataset, tmp_path / "a", *common, "--max_iters=12", cwd=tmp_path)
    first = run_train(lines_dataset, tmp_path / "b", *common, "--max_iters=6", cwd=tmp_path)
    rest = run_train(lines_dataset, tmp_path / "b", *common, "--max_iters=12", "--init_from=resume",
                     "--resume_checkpoint_name=last.pt", cwd=tmp_path)
    for r in (whole, first, rest):
        assert r.returncode == 0, r.stdout + r.stderr
    assert losses(first.stdout) + losses(rest.stdout) == losses(whole.stdout)
    assert len(losses(whole.stdout)) == 12


def test_add_task_trains_and_logs_accuracy(tmp_path):
    """End to end: prepare 1-digit addition, train with eval_accuracy; the accuracy is printed
    at every eval and logged (log.csv), and the last one equals the accuracy of the saved model
    measured here on the first val lines, answer by answer."""
    prepare("data/add/prepare.py", "--digits=1", f"--dataset={tmp_path / 'add'}", "--val_fraction=0.2",
            cwd=tmp_path)
    out_dir = tmp_path / "out"
    result = run_train(tmp_path / "add", out_dir, "--block_size=8", "--batch_size=32", "--max_iters=40",
                       "--eval_interval=20", "--loss_on=answer", "--eval_accuracy=15", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    printed = re.findall(r"^step (\d+): train loss \S+, val loss \S+, val accuracy (\S+)%$",
                         result.stdout, flags=re.M)
    assert [int(i) for i, _ in printed] == [0, 20, 40]
    with open(out_dir / "log.csv", newline="") as f:
        evals = [r for r in csv.DictReader(f) if r["kind"] == "eval"]
    assert [float(r["accuracy"]) * 100 for r in evals] == pytest.approx([float(a) for _, a in printed], abs=0.01)

    ckpt = torch.load(out_dir / "last.pt", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    chars = ckpt["meta"]["chars"]
    val = split_lines(tmp_path / "add", "val")[:15]
    right = 0
    for line in val:  # greedy, no cache, one line at a time: the reference
        prompt, answer = line.split("=")
        ids = [chars.index(c) for c in prompt + "="]
        for _ in range(len(answer) + 1):
            with torch.no_grad():
                logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
        right += "".join(chars[i] for i in ids[len(prompt) + 1:]) == answer + "\n"
    assert float(evals[-1]["accuracy"]) == pytest.approx(right / len(val))

