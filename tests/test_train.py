"""
End-to-end tests for train.py (and sample.py on what it writes): checkpoints, exact resume,
kills, Ctrl+C, divergence, unsafe or broken checkpoints, and DDP under torchrun on CPU (gloo).

    python -m pytest tests/test_train.py -q                 # about 2-3 minutes on 2 cores
    python -m pytest tests/test_train.py -q -m "not slow"   # without the torchrun tests

Every run is a subprocess on a tiny model (2 layers, 32 wide, 32 tokens of context) over a small
generated character dataset in a temp folder, so nothing is written into the repo and each run
takes a few seconds. Expected values come from the setup (iteration numbers, the vocabulary) or
from a reference run (resume parity), never from the output under test.
"""

import csv
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import (REPO, error_lines, run_script, run_train, script_env, start_script,
                      train_args)

from smallgpt.checkpoint import load_checkpoint  # noqa: E402  (conftest put the repo on sys.path)
from model import GPT, GPTConfig  # noqa: E402

NANOGPT_KEYS = {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"}
NANOGPT_MODEL_ARGS = {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- helpers

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_rows(path):
    return [r for r in read_csv(path) if r["kind"] == "train"]


def eval_rows(path):
    return [r for r in read_csv(path) if r["kind"] == "eval"]


def iter_lines(stdout):
    """{iteration: printed loss text} of the 'iter N: loss X, ...' lines."""
    found = re.findall(r"^iter (\d+): loss (\S+),", stdout, flags=re.M)
    return [(int(i), loss) for i, loss in found]


def step_lines(stdout):
    """[(iteration, train loss text, val loss text)] of the 'step N: ...' eval lines."""
    found = re.findall(r"^step (\d+): train loss (\S+), val loss (\S+)$", stdout, flags=re.M)
    return [(int(i), t, v) for i, t, v in found]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def copy_run(out_dir, tmp_path):
    target = tmp_path / "out"
    shutil.copytree(out_dir, target)
    return target


def snapshot(*paths):
    """Bytes and mtime of each file, to prove later that nothing rewrote them."""
    return {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths}


def assert_one_error_line(result, *needles):
    err = error_lines(result.stderr)
    assert len(err) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert err[0].startswith("error: "), err[0]
    for needle in needles:
        assert needle in err[0], f"{needle!r} not in {err[0]!r}"
    return err[0]


def wait_for(predicate, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tmp_files(out_dir):
    return [p for p in out_dir.iterdir() if ".tmp." in p.name]


def resume(dataset, out_dir, *extra, cwd, name="last.pt", env=None):
    return run_train(dataset, out_dir, "--init_from=resume", f"--resume_checkpoint_name={name}",
                     *extra, cwd=cwd, env=env)


# ----------------------------------------------------------------------------- a tiny run

def test_tiny_run_writes_checkpoints_log_and_plot_and_learns(trained_run, vocab):
    out_dir, result = trained_run
    for name in ("ckpt.pt", "last.pt", "log.csv", "loss.png"):
        assert (out_dir / name).is_file(), f"{name} missing; out_dir has {os.listdir(out_dir)}"
    assert (out_dir / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not tmp_files(out_dir)
    assert "Traceback" not in result.stderr

    # every iteration printed and logged once; evals at 0, eval_interval and the end
    assert [i for i, _ in iter_lines(result.stdout)] == list(range(1, 21))
    assert [int(r["iter"]) for r in train_rows(out_dir / "log.csv")] == list(range(1, 21))
    assert [int(r["iter"]) for r in eval_rows(out_dir / "log.csv")] == [0, 10, 20]
    assert [s[0] for s in step_lines(result.stdout)] == [0, 10, 20]
    for (i, printed), row in zip(iter_lines(result.stdout), train_rows(out_dir / "log.csv")):
        assert float(printed) == pytest.approx(float(row["loss"]), abs=6e-5), i  # 4 decimals printed

    # the loss starts near a uniform guess over the vocabulary and falls well below it
    val = [float(r["val_loss"]) for r in eval_rows(out_dir / "log.csv")]
    assert abs(val[0] - math.log(len(vocab))) < 0.3, val
    assert val[-1] < val[0] - 0.5, val
    assert val[-1] < math.log(len(vocab)) - 0.5


def test_checkpoint_keeps_nanogpt_keys(trained_run, vocab, char_dataset):
    out_dir, _ = trained_run
    evals = eval_rows(out_dir / "log.csv")
    for name in ("ckpt.pt", "last.pt"):
        ckpt = load(out_dir / name)  # plain torch.load, weights_only: what nanoGPT's tools can do
        assert NANOGPT_KEYS <= set(ckpt), set(ckpt)
        assert ckpt["model_args"] == dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False,
                                          vocab_size=len(vocab), dropout=0.0)
        assert set(ckpt["model_args"]) == NANOGPT_MODEL_ARGS
        assert ckpt["iter_num"] == 20
        assert ckpt["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in evals), rel=1e-6)
        assert ckpt["config"]["dataset"] == str(char_dataset)
        assert ckpt["config"]["n_layer"] == 2 and ckpt["config"]["max_iters"] == 20
        assert set(ckpt["optimizer"]) == {"state", "param_groups"}
        # nanoGPT's sample.py: GPTConfig(**model_args), strict load of the state dict
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])


def test_sample_prints_text_after_tiny_run(trained_run, vocab, tmp_path):
    out_dir, _ = trained_run
    result = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1",
                        "--max_new_tokens=20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = "".join(line for line in result.stdout.splitlines(keepends=True)
                   if not line.startswith("Overriding"))
    # the prompt '\n', 20 generated characters (one token each), the closing newline
    assert len(text) == 22, repr(text)
    assert set(text) <= set(vocab), repr(text)

    result = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=2",
                        "--max_new_tokens=30", "--checkpoint_name=last.pt", "--start=The knight",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = [s for s in result.stdout.split("---------------") if "The knight" in s]
    assert len(samples) == 2, result.stdout


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("name", ["last.pt", "ckpt.pt"])
def test_resume_continues_from_saved_iteration(trained_run, char_dataset, tmp_path, name):
    out_dir = copy_run(trained_run[0], tmp_path)
    result = resume(char_dataset, out_dir, "--max_iters=25", "--eval_interval=10", cwd=tmp_path, name=name)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {out_dir / name} at iteration 20" in result.stdout
    assert [i for i, _ in iter_lines(result.stdout)] == [21, 22, 23, 24, 25]
    assert [i for i, _, _ in step_lines(result.stdout)] == [20, 25]
    assert load(out_dir / "last.pt")["iter_num"] == 25
    # log.csv carries on below the first run's rows, without duplicates
    train_iters = [int(r["iter"]) for r in train_rows(out_dir / "log.csv")]
    assert train_iters[-5:] == [21, 22, 23, 24, 25] and len(set(train_iters)) == len(train_iters)
    assert [int(r["iter"]) for r in eval_rows(out_dir / "log.csv")] == [0, 10, 20, 25]


def test_resumed_log_csv_keeps_every_train_row(trained_run, char_dataset, tmp_path):
    out_dir = copy_run(trained_run[0], tmp_path)
    result = resume(char_dataset, out_dir, "--max_iters=22", "--eval_interval=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [int(r["iter"]) for r in train_rows(out_dir / "log.csv")] == list(range(1, 23))


@pytest.mark.parametrize("flag", ["--eval_only=True", "--max_iters=0"])
def test_eval_only_evaluates_and_writes_no_checkpoint(char_dataset, tmp_path, flag):
    out_dir = tmp_path / "out"
    result = run_train(char_dataset, out_dir, flag, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [s[0] for s in step_lines(result.stdout)] == [0]
    assert iter_lines(result.stdout) == []
    assert not list(out_dir.glob("*.pt*")), os.listdir(out_dir)


def test_tutorial_resume_with_max_iters_0_only_reports_losses(trained_run, char_dataset, tmp_path):
    out_dir = copy_run(trained_run[0], tmp_path)
    before = snapshot(out_dir / "ckpt.pt", out_dir / "last.pt")
    result = resume(char_dataset, out_dir, "--max_iters=0", "--eval_interval=1", cwd=tmp_path, name="ckpt.pt")
    assert result.returncode == 0, result.stderr
    assert iter_lines(result.stdout) == []
    steps = step_lines(result.stdout)
    assert [s[0] for s in steps] == [20]
    # the same weights on the same eval batches: the numbers the training run printed at step 20
    assert steps[0] == step_lines(trained_run[1].stdout)[-1]
    assert snapshot(out_dir / "ckpt.pt", out_dir / "last.pt") == before


def test_best_val_loss_never_increases(trained_run, char_dataset, vocab, tmp_path):
    out_dir = copy_run(trained_run[0], tmp_path)
    best = load(out_dir / "last.pt")["best_val_loss"]
    ckpt_before = snapshot(out_dir / "ckpt.pt")
    # a dataset of uniformly random tokens over the same vocabulary: the trained model is worse
    # than a uniform guess there, so every val loss of the resumed run is above `best`
    noise = tmp_path / "noise"
    noise.mkdir()
    shutil.copy(char_dataset / "meta.json", noise / "meta.json")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20_000), ("val", 4_000)):
        rng.integers(0, len(vocab), n).astype(np.uint16).tofile(noise / f"{split}.bin")
    result = resume(noise, out_dir, "--max_iters=24", "--eval_interval=2",
                    "--always_save_checkpoint=False", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    vals = [float(v) for _, _, v in step_lines(result.stdout)]
    assert len(vals) == 3 and min(vals) > best + 0.5, (vals, best)  # the setup did what it should
    last = load(out_dir / "last.pt")
    assert last["iter_num"] == 24
    assert last["best_val_loss"] == best
    assert snapshot(out_dir / "ckpt.pt") == ckpt_before  # the best model stays the best model


PARITY = ["--dropout=0.1", "--gradient_accumulation_steps=2", "--eval_interval=3",
          "--checkpoint_interval=6", "--warmup_iters=2", "--lr_decay_iters=12", "--min_lr=1e-3"]


def test_resume_parity_exact(char_dataset, tmp_path):
    """12 iterations straight == 6, then resume from last.pt for 6: every logged loss, every
    eval and the final weights and optimizer state identical (dropout on, so RNG state matters)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    a = run_train(char_dataset, straight, *PARITY, "--max_iters=12", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    b1 = run_train(char_dataset, split, *PARITY, "--max_iters=6", cwd=tmp_path)
    assert b1.returncode == 0, b1.stderr
    b2 = resume(char_dataset, split, *PARITY, "--max_iters=12", cwd=tmp_path)
    assert b2.returncode == 0, b2.stderr
    assert "at iteration 6" in b2.stdout

    def rows(out, kind):
        keys = ("iter", "loss", "lr") if kind == "train" else ("iter", "train_loss", "val_loss", "lr")
        return [tuple(r[k] for k in keys) for r in read_csv(out / "log.csv") if r["kind"] == kind]

    assert len(rows(straight, "train")) == 12
    assert rows(split, "train") == rows(straight, "train")  # every row, iteration 6's included
    assert rows(split, "eval") == rows(straight, "eval")
    assert iter_lines(b1.stdout) + iter_lines(b2.stdout) == iter_lines(a.stdout)

    ref, got = load(straight / "last.pt"), load(split / "last.pt")
    assert got["iter_num"] == ref["iter_num"] == 12
    assert got["best_val_loss"] == ref["best_val_loss"]
    assert ref["model"].keys() == got["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    for i, state in ref["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, got["optimizer"]["state"][i][k]), (i, k)


def test_block_size_1024_set_in_a_config_file_grows_a_resumed_model(trained_run, char_dataset, tmp_path):
    """block_size = 1024 in a config file (config/train_gpt2.py's line) is the user's choice, though
    it equals the default: a resumed 32-position model grows to 1024 positions. The same resume
    that leaves block_size at its default keeps the model's own 32."""
    config_file = tmp_path / "long_context.py"
    config_file.write_text("block_size = 1024\n", encoding="utf-8")
    for name, extra in (("grown", [str(config_file)]), ("kept", [])):
        out_dir = copy_run(trained_run[0], tmp_path / name)
        args = [a for a in train_args(char_dataset, out_dir, "--init_from=resume",
                                      "--resume_checkpoint_name=last.pt", "--max_iters=21",
                                      "--eval_interval=1000")
                if not a.startswith("--block_size=")]  # TINY's --block_size=32 would be given too
        result = run_script("train.py", *extra, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        saved = load(out_dir / "last.pt")
        assert saved["iter_num"] == 21
        if name == "grown":
            assert "992 new rows of wpe" in result.stderr, result.stderr
            assert "micro-batch of 4 x 1024 tokens" in result.stdout
            assert saved["model_args"]["block_size"] == 1024
            assert saved["model"]["transformer.wpe.weight"].shape == (1024, 32)
        else:
            assert "block_size=1024 (the default) is more than the model's 32" in result.stderr
            assert saved["model_args"]["block_size"] == 32


def test_resume_without_saved_random_state_differs(char_dataset, tmp_path):
    """The control for the parity test: the same resume from a checkpoint stripped of its random
    state (as a nanoGPT checkpoint would be) does not reproduce the losses, so the parity test
    really depends on what the checkpoint saves."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_train(char_dataset, straight, *PARITY, "--max_iters=8", cwd=tmp_path).returncode == 0
    assert run_train(char_dataset, split, *PARITY, "--max_iters=6", cwd=tmp_path).returncode == 0
    ckpt = load(split / "last.pt")
    del ckpt["rng"]
    torch.save(ckpt, split / "last.pt")
    result = resume(char_dataset, split, *PARITY, "--max_iters=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no random state" in result.stderr
    resumed = {r["iter"]: r["loss"] for r in train_rows(split / "log.csv") if int(r["iter"]) > 6}
    reference = {r["iter"]: r["loss"] for r in train_rows(straight / "log.csv") if int(r["iter"]) > 6}
    assert list(resumed) == list(reference) == ["7", "8"]
    assert resumed["7"] != reference["7"] and resumed["8"] != reference["8"]


# ----------------------------------------------------------------------------- kills and signals

def test_kill_9_during_checkpoint_write_keeps_previous_checkpoint(trained_run, char_dataset, tmp_path):
    out_dir = copy_run(trained_run[0], tmp_path)
    before = snapshot(out_dir / "last.pt")
    args = train_args(char_dataset, out_dir, "--init_from=resume", "--resume_checkpoint_name=last.pt",
                      "--max_iters=24", "--eval_interval=4")
    proc = start_script("train.py", *args, cwd=tmp_path, stdout_path=tmp_path / "run.log",
                        env=script_env(NANOGPT_TEST_SLOW_SAVE=3))
    try:
        # at iteration 24: ckpt.pt is written (3 s), then last.pt; kill -9 while last.pt is half done
        wait_for(lambda: any(p.name.startswith("last.pt.tmp.") for p in out_dir.iterdir()), 90,
                 "last.pt's temp file", proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
    assert snapshot(out_dir / "last.pt") == before
    assert load_checkpoint(str(out_dir / "last.pt"))["iter_num"] == 20

    leftovers = tmp_files(out_dir)
    assert [p.name for p in leftovers] == [f"last.pt.tmp.{proc.pid}"]

    result = resume(char_dataset, out_dir, "--max_iters=24", "--eval_interval=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "at iteration 20" in result.stdout
    assert [i for i, _ in iter_lines(result.stdout)] == [21, 22, 23, 24]
    assert load(out_dir / "last.pt")["iter_num"] == 24
    assert not tmp_files(out_dir)  # the killed write's temp file (as big as a checkpoint) is gone
    assert f"removed {leftovers[0]}" in result.stderr


def ctrl_c_at(iteration, args, tmp_path):
    """train.py `args` in the background, SIGINT once it logged `iteration`: (exit code, output)."""
    proc = start_script("train.py", *args, cwd=tmp_path, stdout_path=tmp_path / "run.log")
    try:
        wait_for(lambda: f"iter {iteration}:" in (tmp_path / "run.log").read_text(), 90,
                 f"iteration {iteration}", proc)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    return code, (tmp_path / "run.log").read_text()


def test_sigint_saves_last_pt_exits_130_and_resume_continues(char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    args = train_args(char_dataset, out_dir, "--max_iters=100000", "--eval_interval=100000")
    code, output = ctrl_c_at(5, args, tmp_path)
    assert code == 130, output
    assert "Traceback" not in output
    stopped = re.search(r"stopped at iteration (\d+)\. To resume:\n  (.+)\n", output)
    assert stopped, output
    k = int(stopped.group(1))
    assert k >= 5 and iter_lines(output)[-1][0] == k
    assert load(out_dir / "last.pt")["iter_num"] == k

    # the printed command, as typed, resumes (plus a nearer max_iters so it ends)
    command = shlex.split(stopped.group(2))
    assert command[0] == "python" and "--init_from=resume" in command
    result = subprocess.run([sys.executable, *command[1:], f"--max_iters={k + 3}"], cwd=tmp_path,
                            env=script_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {out_dir / 'last.pt'} at iteration {k}" in result.stdout
    assert [i for i, _ in iter_lines(result.stdout)] == [k + 1, k + 2, k + 3]


def test_sigint_before_a_new_runs_first_checkpoint_keeps_the_earlier_run(trained_run, char_dataset,
                                                                         tmp_path):
    """A new run in a used out_dir is warned to replace the earlier run's checkpoints at its first
    checkpoint; a Ctrl+C before then keeps them byte for byte, and this run's state goes to
    interrupted.pt, which the printed command resumes. Its first checkpoint does replace them:
    the earlier last.pt goes with the new ckpt.pt, so the folder never mixes two runs."""
    out_dir = copy_run(trained_run[0], tmp_path)
    before = snapshot(out_dir / "ckpt.pt", out_dir / "last.pt")
    args = train_args(char_dataset, out_dir, "--n_embd=16", "--max_iters=100000", "--eval_interval=100000")
    code, output = ctrl_c_at(3, args, tmp_path)
    assert code == 130 and "Traceback" not in output, output
    assert snapshot(out_dir / "ckpt.pt", out_dir / "last.pt") == before
    assert "ckpt.pt and last.pt in" in output and "are kept" in output, output
    k = int(re.search(r"stopped at iteration (\d+)\.", output).group(1))
    interrupted = load(out_dir / "interrupted.pt")
    assert interrupted["iter_num"] == k and interrupted["model_args"]["n_embd"] == 16
    command = shlex.split(re.search(r"To resume:\n  (.+)\n", output).group(1))
    assert "--resume_checkpoint_name=interrupted.pt" in command
    result = subprocess.run([sys.executable, *command[1:], f"--max_iters={k + 2}"], cwd=tmp_path,
                            env=script_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert [i for i, _ in iter_lines(result.stdout)] == [k + 1, k + 2]

    # a new run whose first checkpoint is ckpt.pt alone (last.pt is due later) removes last.pt
    (out_dir / "interrupted.pt").unlink()
    shutil.copy(trained_run[0] / "last.pt", out_dir / "last.pt")
    result = run_train(char_dataset, out_dir, "--n_embd=16", "--max_iters=2", "--eval_interval=1",
                       "--checkpoint_interval=1000", "--always_save_checkpoint=True", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"removed the earlier run's {out_dir / 'last.pt'}" in result.stdout
    assert load(out_dir / "last.pt")["model_args"]["n_embd"] == 16  # written at the end, this run's


def test_second_sigint_exits_at_once(char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    args = train_args(char_dataset, out_dir, "--max_iters=100000", "--eval_interval=100000")
    proc = start_script("train.py", *args, cwd=tmp_path, stdout_path=tmp_path / "run.log",
                        env=script_env(NANOGPT_TEST_SLOW_SAVE=30))
    try:
        wait_for(lambda: "iter 3:" in (tmp_path / "run.log").read_text(), 90, "iteration 3", proc)
        proc.send_signal(signal.SIGINT)  # finish the step, then write last.pt (slowed to 30 s)
        wait_for(lambda: tmp_files(out_dir), 30, "last.pt's temp file", proc)
        proc.send_signal(signal.SIGINT)  # don't wait for the write
        code = proc.wait(timeout=20)
    finally:
        proc.kill()
    output = (tmp_path / "run.log").read_text()
    assert code == 130, output
    assert "second interrupt" in output
    assert not (out_dir / "last.pt").exists()  # the write was abandoned, not finished


# ----------------------------------------------------------------------------- divergence

@pytest.mark.parametrize("extra, first_save", [
    ([], None),  # every step's loss is checked (log_interval=1)
    # the bad loss is only printed every 10 steps, but last.pt is due at 25: checked there too
    (["--log_interval=10", "--checkpoint_interval=5"], 25),
])
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(trained_run, char_dataset, tmp_path,
                                                            extra, first_save):
    out_dir = copy_run(trained_run[0], tmp_path)
    before = snapshot(out_dir / "ckpt.pt", out_dir / "last.pt")
    result = resume(char_dataset, out_dir, "--learning_rate=1e6", "--grad_clip=0", "--decay_lr=False",
                    "--max_iters=40", "--eval_interval=10", *extra, cwd=tmp_path)
    assert result.returncode not in (0, 130), result.stdout + result.stderr
    line = assert_one_error_line(result, "not finite", "learning_rate")
    named = [int(n) for n in re.findall(r"iterations? (\d+)(?: and (\d+))?", line)[0] if n]
    if first_save is None:
        assert named == [iter_lines(result.stdout)[-1][0] + 1]  # the first iteration not printed
    else:
        assert all(20 < n <= first_save for n in named), line
    assert snapshot(out_dir / "ckpt.pt", out_dir / "last.pt") == before
    assert not tmp_files(out_dir)


# ----------------------------------------------------------------------------- unsafe or broken files

class Payload:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path, marker, kind):
    obj = {"model": Payload(marker), "model_args": {"n_layer": 1}, "iter_num": 0}
    if kind == "torch.save":
        torch.save(obj, path)
    else:  # a bare pickle, as an old torch.save or a hand-made file would be
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_without_running_it(char_dataset, tmp_path, kind):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "payload_ran"
    malicious_checkpoint(out_dir / "ckpt.pt", marker, kind)

    result = run_train(char_dataset, out_dir, "--init_from=resume", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, str(out_dir / "ckpt.pt"), "refusing")
    assert not marker.exists()

    result = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, str(out_dir / "ckpt.pt"), "refusing")
    assert not marker.exists()

    # the control: an unrestricted load of the same file does run the payload
    with open(out_dir / "ckpt.pt", "rb") as f:
        torch.load(f, weights_only=False) if kind == "torch.save" else pickle.load(f)
    assert marker.exists()


def test_malicious_meta_pkl_is_refused_by_train(char_dataset, tmp_path):
    data = tmp_path / "olddata"
    data.mkdir()
    for name in ("train.bin", "val.bin"):
        shutil.copy(char_dataset / name, data / name)
    marker = tmp_path / "payload_ran"
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3, "itos": Payload(marker)}, f)
    result = run_train(data, tmp_path / "out", "--max_iters=2", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, "meta.pkl", "refusing")
    assert not marker.exists()


NOISE = np.random.default_rng(0).bytes(5000)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "memoize-first", "empty"])
def test_broken_checkpoint_gives_one_line_naming_the_file(trained_run, char_dataset, tmp_path, damage):
    out_dir = copy_run(trained_run[0], tmp_path)
    path = out_dir / "ckpt.pt"
    data = path.read_bytes()
    # memoize-first: a pickle MEMOIZE opcode on an empty stack (an IndexError inside torch.load)
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": NOISE,
                      "memoize-first": b"\x94" + NOISE, "empty": b""}[damage])
    result = run_train(char_dataset, out_dir, "--init_from=resume", "--max_iters=25", cwd=tmp_path)
    assert result.returncode != 0
    line = assert_one_error_line(result, str(path))
    assert "would run code" not in line  # damaged, not malicious: don't cry wolf
    result = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, str(path))


# ----------------------------------------------------------------------------- bad setups

def test_missing_train_bin_names_the_prepare_command(char_dataset, tmp_path):
    # a copy of the repo's scripts, so a data/<name> folder is surely unprepared
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in REPO.glob("*.py"):
        shutil.copy(path, repo / path.name)
    shutil.copytree(REPO / "config", repo / "config")
    shutil.copytree(REPO / "smallgpt", repo / "smallgpt", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data" / "don_char").mkdir(parents=True)
    shutil.copy(REPO / "data" / "don_char" / "prepare.py", repo / "data" / "don_char" / "prepare.py")
    # --dtype=float32: with 'auto', a CPU without bf16 units adds a note line on stderr
    result = subprocess.run([sys.executable, str(repo / "train.py"), "--dataset=don_char",
                             f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--compile=False",
                             "--dtype=float32"],
                            cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert_one_error_line(result, "train.bin", "run: python data/don_char/prepare.py")

    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    result = run_train(empty, tmp_path / "out2", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, "train.bin", str(empty))


def test_dataset_shorter_than_block_size(char_dataset, tmp_path):
    result = run_train(char_dataset, tmp_path / "out", "--block_size=100000", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_error_line(result, "block_size")


# ----------------------------------------------------------------------------- DDP (torchrun, gloo)

def torchrun(*args, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(REPO / "train.py"), *map(str, args)],
                          cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_two_processes_train_and_save(char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    result = torchrun(*train_args(char_dataset, out_dir, "--gradient_accumulation_steps=2",
                                  "--max_iters=6", "--eval_interval=3"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    # only rank 0 prints: each iteration and each eval exactly once
    assert [i for i, _ in iter_lines(result.stdout)] == [1, 2, 3, 4, 5, 6]
    assert [s[0] for s in step_lines(result.stdout)] == [0, 3, 6]
    assert result.stdout.count("saved ") == 4  # ckpt.pt and last.pt at 3 and at 6
    for name in ("ckpt.pt", "last.pt"):
        ckpt = load_checkpoint(str(out_dir / name))
        assert ckpt["iter_num"] == 6
        assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert [int(r["iter"]) for r in train_rows(out_dir / "log.csv")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_ddp_trains_on_the_same_batches_as_one_process_and_resumes_across_world_sizes(
        char_dataset, tmp_path):
    """One global batch stream: 1 process x 4 micro-batches and 2 processes x 2 train on the
    same windows, so in fp32 with dropout 0 the logged losses (the global batch's mean over
    the ranks) agree step by step; and a run saved by 2 processes, resumed by 1, continues as
    the uninterrupted single-process run."""
    # a gentler learning rate than TINY's: the summation order differs between the two (a local
    # sum, then an all-reduce) and a large step would amplify those last-bit differences
    common = ("--gradient_accumulation_steps=4", "--dropout=0.0", "--eval_interval=5",
              "--learning_rate=2e-3")
    one = run_train(char_dataset, tmp_path / "one", *common, "--max_iters=10", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(*train_args(char_dataset, tmp_path / "two", *common, "--max_iters=10"),
                   cwd=tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    single = [float(r["loss"]) for r in train_rows(tmp_path / "one" / "log.csv")]
    double = [float(r["loss"]) for r in train_rows(tmp_path / "two" / "log.csv")]
    assert len(single) == len(double) == 10
    assert max(abs(a - b) for a, b in zip(single, double)) < 1e-5, (single, double)
    assert single[-1] < single[0] - 0.1  # it did train
    # evaluation too: each rank evaluates every second batch of the same windows
    evals = [[(float(r["train_loss"]), float(r["val_loss"])) for r in eval_rows(run / "log.csv")]
             for run in (tmp_path / "one", tmp_path / "two")]
    assert len(evals[0]) == len(evals[1]) == 3  # iterations 0, 5, 10
    assert max(abs(a - b) for pa, pb in zip(*evals) for a, b in zip(pa, pb)) < 1e-5, evals

    half = tmp_path / "half"
    result = torchrun(*train_args(char_dataset, half, *common, "--max_iters=5"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result = run_train(char_dataset, half, *common, "--max_iters=10", "--init_from=resume",
                       "--resume_checkpoint_name=last.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saved by 2 process(es), this run has 1: batches continue exactly" in result.stderr
    resumed = [float(r["loss"]) for r in train_rows(half / "log.csv")]
    assert max(abs(a - b) for a, b in zip(resumed[5:], single[5:])) < 1e-5, (resumed, single)
    torch.testing.assert_close(load(half / "last.pt")["model"], load(tmp_path / "one" / "last.pt")["model"],
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_xl_memory_under_ddp_trains_as_one_process(char_dataset, tmp_path):
    """Sequential batches with TransformerXL memory: each rank carries the memories of its own
    micro-batches, so 1 process x 2 micro-batches and 2 processes x 1 log the same losses and
    evals (the eval reads the val split in order with its memory on every rank)."""
    common = ("--gradient_accumulation_steps=2", "--dropout=0.0", "--eval_interval=5",
              "--learning_rate=2e-3", "--max_iters=10", "--pos_emb=rope",
              "--data_order=sequential", "--xl_memory=16")
    one = run_train(char_dataset, tmp_path / "one", *common, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(*train_args(char_dataset, tmp_path / "two", *common), cwd=tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    rows = [[float(r["loss"]) for r in train_rows(tmp_path / run / "log.csv")] for run in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 10
    assert max(abs(a - b) for a, b in zip(*rows)) < 1e-5, rows
    evals = [[float(r["val_loss"]) for r in eval_rows(tmp_path / run / "log.csv")] for run in ("one", "two")]
    assert len(evals[0]) == 3 and max(abs(a - b) for a, b in zip(*evals)) < 1e-5, evals


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_loopback_nodes_train_save_and_match_one_process(char_dataset, tmp_path):
    """README's two-node commands on one machine: two torchrun launchers (--nnodes=2,
    --node_rank=0/1, one process each) rendezvous on 127.0.0.1, train, and node 0 saves; the
    losses equal a single process's with the same global batch."""
    common = ("--gradient_accumulation_steps=2", "--dropout=0.0", "--eval_interval=3",
              "--max_iters=6", "--learning_rate=2e-3")
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--nnodes=2",
         f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
         str(REPO / "train.py"), *train_args(char_dataset, tmp_path / "nodes", *common)],
        cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-2000:] + err[-2000:]
    assert "2 process(es)" in outputs[0][0] and "iter 1:" not in outputs[1][0]  # rank 0 prints
    assert load(tmp_path / "nodes" / "last.pt")["iter_num"] == 6
    one = run_train(char_dataset, tmp_path / "one", *common, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    losses = [[float(r["loss"]) for r in train_rows(run / "log.csv")]
              for run in (tmp_path / "one", tmp_path / "nodes")]
    assert len(losses[1]) == 6 and max(abs(a - b) for a, b in zip(*losses)) < 1e-5, losses


@pytest.mark.slow
def test_fsdp_matches_ddp_and_checkpoints_cross_load(char_dataset, tmp_path):
    """parallel='fsdp' (2 processes, FSDP2) against DDP(2) on the same global batches: the same
    losses step by step and the same weights and AdamW state at the save; the FSDP checkpoint is
    the one full format (sample.py reads it, one process resumes it) and the DDP checkpoint
    resumes under FSDP; these resumes, and one process's checkpoint resumed by DDP(2), end where
    one uninterrupted process does (which the 1x4 vs 2x2 test above ties to DDP)."""
    # 3 eval batches over 2 processes: one rank evaluates one batch fewer, yet under FSDP it
    # must join every forward
    common = ("--gradient_accumulation_steps=4", "--dropout=0.0", "--eval_interval=3",
              "--eval_iters=3", "--learning_rate=2e-3")
    fsdp = "--parallel=fsdp"

    def run(out_dir, *extra, processes=2):
        args = train_args(char_dataset, tmp_path / out_dir, *common, *extra)
        result = torchrun(*args, cwd=tmp_path) if processes == 2 else \
            run_script("train.py", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return [float(r["loss"]) for r in train_rows(tmp_path / out_dir / "log.csv")]

    ddp = run("ddp", "--max_iters=6")
    sharded = run("fsdp", fsdp, "--max_iters=6")
    assert len(ddp) == len(sharded) == 6 and ddp[-1] < ddp[0] - 0.1
    assert max(abs(a - b) for a, b in zip(ddp, sharded)) < 1e-5, (ddp, sharded)
    evals = [[(float(r["train_loss"]), float(r["val_loss"]))
              for r in eval_rows(tmp_path / run / "log.csv")] for run in ("ddp", "fsdp")]
    assert len(evals[0]) == len(evals[1]) == 3  # iterations 0, 3, 6
    assert max(abs(a - b) for pa, pb in zip(*evals) for a, b in zip(pa, pb)) < 1e-5, evals
    reference, saved = load(tmp_path / "ddp" / "last.pt"), load(tmp_path / "fsdp" / "last.pt")
    assert saved["model"].keys() == reference["model"].keys()
    torch.testing.assert_close(saved["model"], reference["model"], atol=1e-5, rtol=0)
    # the optimizer state in the plain numbered layout, not FSDP's names or shards
    assert saved["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    torch.testing.assert_close(saved["optimizer"]["state"], reference["optimizer"]["state"],
                               atol=1e-5, rtol=0)
    sample = run_script("sample.py", f"--out_dir={tmp_path / 'fsdp'}", "--device=cpu",
                        "--num_samples=1", "--max_new_tokens=20", "--checkpoint_name=last.pt",
                        cwd=tmp_path)
    assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr[-3000:]

    resume = ("--max_iters=9", "--init_from=resume", "--resume_checkpoint_name=last.pt")
    fsdp_to_one = run("fsdp", *resume, processes=1)
    ddp_to_fsdp = run("ddp", fsdp, *resume)
    run("one_to_two", "--max_iters=6", processes=1)  # and 1 -> 2 processes (DDP)
    one_to_two = run("one_to_two", *resume)
    one = run("one", "--max_iters=9", processes=1)
    for name, losses in (("fsdp", fsdp_to_one), ("ddp", ddp_to_fsdp), ("one_to_two", one_to_two)):
        assert len(losses) == 9 and max(abs(a - b) for a, b in zip(losses, one)) < 1e-5, \
            (name, losses, one)
        torch.testing.assert_close(load(tmp_path / name / "last.pt")["model"],
                                   load(tmp_path / "one" / "last.pt")["model"], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_ddp_gradient_accumulation_must_divide_by_world_size(char_dataset, tmp_path):
    result = torchrun(*train_args(char_dataset, tmp_path / "out", "--gradient_accumulation_steps=3",
                                  "--max_iters=2"), cwd=tmp_path)
    assert result.returncode != 0
    assert "error: gradient_accumulation_steps=3 is not divisible by the 2 processes" in result.stderr
    assert "iter 1:" not in result.stdout


def children(pid):
    """Process ids whose parent is `pid` (Linux /proc; no psutil needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return None
    return int(env[b"RANK"]) if b"RANK" in env else None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the rank's process through /proc")
def test_ddp_rank_killed_fails_the_job_naming_the_rank_then_resume(char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    log = tmp_path / "run.log"
    args = train_args(char_dataset, out_dir, "--gradient_accumulation_steps=2", "--max_iters=100000",
                      "--eval_interval=100000", "--checkpoint_interval=4")
    proc = start_torchrun(*args, cwd=tmp_path, log=log)
    try:
        kill_rank_1_after_the_first_last_pt(proc, log)
        code = proc.wait(timeout=120)
    finally:
        stop_group(proc)
    output = log.read_text()
    assert code != 0
    # torchrun's summary names the rank that died and how
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", output), output[-3000:]

    k = load_checkpoint(str(out_dir / "last.pt"))["iter_num"]
    assert k >= 4 and k % 4 == 0
    result = torchrun(*train_args(char_dataset, out_dir, "--gradient_accumulation_steps=2",
                                  "--init_from=resume", "--resume_checkpoint_name=last.pt",
                                  f"--max_iters={k + 3}", "--eval_interval=100000"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from {out_dir / 'last.pt'} at iteration {k}" in result.stdout
    assert [i for i, _ in iter_lines(result.stdout)] == [k + 1, k + 2, k + 3]
    assert load_checkpoint(str(out_dir / "last.pt"))["iter_num"] == k + 3



def start_torchrun(*args, cwd, log, torchrun_args=("--standalone", "--nproc_per_node=2")):
    """torchrun in a session of its own (so the test can signal its whole process group, as a
    terminal's Ctrl+C does); stdout and stderr go to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args,
                                 str(REPO / "train.py"), *map(str, args)], cwd=cwd,
                                env=script_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_group(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_rank_1_after_the_first_last_pt(proc, log):
    """As a crash would: once last.pt of iteration 4 is written, SIGKILL rank 1's process."""
    wait_for(lambda: "last.pt (iteration 4)" in log.read_text(), 120, "the first last.pt", proc)
    workers = {rank_of(p): p for p in children(proc.pid) if rank_of(p) is not None}
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_ctrl_c_under_torchrun_saves_once_prints_the_torchrun_resume_and_it_continues(
        char_dataset, tmp_path):
    """Ctrl+C (SIGINT to torchrun's process group): the ranks stop at the same step, last.pt is
    written once and the printed torchrun command resumes. torchrun itself exits 1 (it raises on
    the signal and does not pass its workers' codes on); the workers exit 130, which torchrun
    reports when only they are signalled (a scheduler's SIGTERM): checked on the resumed run."""
    out_dir, log = tmp_path / "out", tmp_path / "run.log"
    args = train_args(char_dataset, out_dir, "--gradient_accumulation_steps=2",
                      "--max_iters=100000", "--eval_interval=100000")
    proc = start_torchrun(*args, cwd=tmp_path, log=log)
    try:
        wait_for(lambda: "iter 5:" in log.read_text(), 120, "iteration 5", proc)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=90)
    finally:
        stop_group(proc)
    output = log.read_text()
    assert code == 1, output[-3000:]
    assert "second interrupt" not in output  # torchrun's forwarded copy is not a second Ctrl+C
    assert output.count("saved ") == 1, output[-3000:]
    stopped = re.search(r"stopped at iteration (\d+)\. To resume:\n  (.+)\n", output)
    assert stopped, output[-3000:]
    k = int(stopped.group(1))
    assert k >= 5 and iter_lines(output)[-1][0] == k
    assert load(out_dir / "last.pt")["iter_num"] == k

    command = shlex.split(stopped.group(2))
    assert command[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"], command
    assert "--init_from=resume" in command and "--resume_checkpoint_name=last.pt" in command
    resumed = start_torchrun(*command[4:], cwd=tmp_path, log=tmp_path / "resumed.log",
                             torchrun_args=command[1:3])
    try:
        wait_for(lambda: f"iter {k + 2}:" in (tmp_path / "resumed.log").read_text(), 120,
                 f"iteration {k + 2}", resumed)
        for worker in children(resumed.pid):  # the workers only, as a scheduler might
            os.kill(worker, signal.SIGTERM)
        code = resumed.wait(timeout=90)
    finally:
        stop_group(resumed)
    output = (tmp_path / "resumed.log").read_text()
    assert code == 1
    assert f"resuming from {out_dir / 'last.pt'} at iteration {k}" in output
    j = load(out_dir / "last.pt")["iter_num"]
    assert [i for i, _ in iter_lines(output)] == list(range(k + 1, j + 1))
    # torchrun names the first worker to exit as the root cause (a rank that was still exiting
    # then gets its SIGTERM and is listed with -15)
    root_cause = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", output, flags=re.S)
    assert root_cause and root_cause.group(1) == "130", output[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the rank's process through /proc")
def test_elastic_restart_after_a_killed_rank_ends_with_the_uninterrupted_weights(
        char_dataset, tmp_path):
    """torchrun --max-restarts=1 with init_from='auto': rank 1 is killed (SIGKILL) after the
    first last.pt; torchrun restarts both workers, they resume from last.pt, the job exits 0,
    and the final weights are those of one uninterrupted process with the same global batch."""
    out_dir, log = tmp_path / "out", tmp_path / "run.log"
    common = ("--gradient_accumulation_steps=2", "--dropout=0.0", "--learning_rate=2e-3",
              "--max_iters=40", "--eval_interval=100000")  # long enough for the kill to land
    proc = start_torchrun(*train_args(char_dataset, out_dir, *common, "--checkpoint_interval=4",
                                      "--init_from=auto"), cwd=tmp_path, log=log,
                          torchrun_args=("--standalone", "--nproc_per_node=2", "--max-restarts=1"))
    try:
        kill_rank_1_after_the_first_last_pt(proc, log)
        code = proc.wait(timeout=240)
    finally:
        stop_group(proc)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "exitcode: -9" in output  # torchrun saw the kill, then restarted the group
    resumed = re.search(r"resuming from \S+ at iteration (\d+)", output)
    assert resumed and int(resumed.group(1)) in range(4, 40, 4), output[-3000:]
    assert load(out_dir / "last.pt")["iter_num"] == 40

    one = run_train(char_dataset, tmp_path / "one", *common, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    torch.testing.assert_close(load(out_dir / "last.pt")["model"],
                               load(tmp_path / "one" / "last.pt")["model"], atol=1e-5, rtol=0)


def test_init_from_auto_starts_then_continues_from_last_pt(char_dataset, tmp_path):
    """The same command line twice: the first run starts from scratch, the second resumes from
    the first's last.pt and ends with the weights of one uninterrupted run."""
    out_dir = tmp_path / "auto"
    common = ("--eval_interval=100000", "--init_from=auto")
    first = run_train(char_dataset, out_dir, *common, "--max_iters=4", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "init_from='auto': no last.pt yet, starting from scratch" in first.stdout
    second = run_train(char_dataset, out_dir, *common, "--max_iters=8", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "init_from='auto': resuming from last.pt" in second.stdout
    assert [i for i, _ in iter_lines(second.stdout)] == [5, 6, 7, 8]
    straight = run_train(char_dataset, tmp_path / "straight", "--eval_interval=100000",
                         "--max_iters=8", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = load(tmp_path / "straight" / "last.pt")["model"]
    resumed = load(out_dir / "last.pt")["model"]
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())
