"""
Tests for smallgpt/runlog.py (the training-run logger) and plot.py (the run comparison CLI).

    python -m pytest tests/test_runlog.py -q

CPU only, offline, a few seconds. The TensorBoard test reads the events back when tensorboard is
installed; the wandb test runs with WANDB_MODE=offline and is skipped when wandb isn't installed.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smallgpt.runlog import COLUMNS, RunLog  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG = {"dataset": "shakespeare_char", "n_layer": 2, "n_head": 2, "n_embd": 32}


def read_rows(csv_path):
    """log.csv as (header, list of row dicts of raw strings), read with the csv module, not runlog."""
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def assert_png(path):
    data = Path(path).read_bytes()
    assert len(data) > len(PNG_SIGNATURE), f"{path} is {len(data)} bytes"
    assert data.startswith(PNG_SIGNATURE), f"{path} starts with {data[:8]!r}"


def test_csv_columns_values_and_png(tmp_path):
    log = RunLog(str(tmp_path), CONFIG)
    log.train(0, 4.25, 1e-3, 120.5, 5000.0, None)
    log.train(10, 3.5, 9e-4, 100.0, 6000.0, 0.0125)
    log.eval(10, 3.25, 3.75, 9e-4)

    # rows must be on disk before close(): a killed run keeps its log
    header, rows = read_rows(tmp_path / "log.csv")
    assert header == "iter,kind,loss,train_loss,val_loss,lr,ms_per_iter,tokens_per_s,mfu,accuracy".split(",")
    assert [(r["iter"], r["kind"]) for r in rows] == [("0", "train"), ("10", "train"), ("10", "eval")]

    first, second, evaluation = rows
    assert float(first["loss"]) == 4.25 and float(first["lr"]) == 1e-3
    assert float(first["ms_per_iter"]) == 120.5 and float(first["tokens_per_s"]) == 5000.0
    assert first["mfu"] == "", "mfu=None must be an empty cell"
    assert float(second["mfu"]) == 0.0125
    assert first["train_loss"] == first["val_loss"] == ""
    assert float(evaluation["train_loss"]) == 3.25 and float(evaluation["val_loss"]) == 3.75
    assert float(evaluation["lr"]) == 9e-4
    assert evaluation["loss"] == evaluation["ms_per_iter"] == evaluation["tokens_per_s"] == evaluation["mfu"] == ""

    log.wait_for_plot()  # the first eval draws loss.png, in the background
    assert_png(tmp_path / "loss.png")
    assert not (tmp_path / "loss.png.tmp").exists()
    log.close()
    log.close()  # a second close is harmless


def test_fresh_run_keeps_old_log_aside(tmp_path):
    """A new run in the folder of an earlier one: log.csv is the new run's alone (plot.py and the
    workbench read one run from it), and the earlier rows are kept whole as log.1.csv rather than
    truncated as they used to be (issue #26: nothing saved is lost)."""
    old = RunLog(str(tmp_path), CONFIG, plot=False)
    old.train(0, 9.0, 1e-3, 1.0, 1.0, None)
    old.close()
    new = RunLog(str(tmp_path), CONFIG, plot=False)  # no resume_iter: a fresh run
    new.train(0, 5.0, 1e-3, 1.0, 1.0, None)
    new.close()
    _, rows = read_rows(tmp_path / "log.csv")
    assert [float(r["loss"]) for r in rows] == [5.0]
    _, kept = read_rows(tmp_path / "log.1.csv")
    assert [float(r["loss"]) for r in kept] == [9.0]


def test_resume_carries_on_below_the_rows_before_resume_iter(tmp_path):
    """train.py logs the step that reaches iteration N, then checkpoints at N; a run resumed from
    there evaluates N again and goes on with N+1. So log.csv keeps the train row of N, marks the
    resume with a row of kind 'resume', and carries on. The eval of N and what came after it are
    no longer deleted: the earlier log is kept whole as log.1.csv (issue #26)."""
    first = RunLog(str(tmp_path), CONFIG, plot=False)
    for iter_num in (0, 10, 20, 30):
        if iter_num % 20 == 0:
            first.eval(iter_num, 5.0 - iter_num / 100, 5.1 - iter_num / 100, 1e-3)
        first.train(iter_num, 6.0 - iter_num / 100, 1e-3, 50.0, 1000.0, None)
    first.close()
    earlier = (tmp_path / "log.csv").read_bytes()

    resumed = RunLog(str(tmp_path), CONFIG, resume_iter=20, plot=False)
    assert (tmp_path / "log.csv").read_bytes() == earlier  # nothing moves before the first row
    resumed.eval(20, 1.5, 1.75, 5e-4)
    resumed.train(30, 1.25, 5e-4, 50.0, 1000.0, None)
    resumed.close()
    header, rows = read_rows(tmp_path / "log.csv")
    assert header == list(COLUMNS)
    assert [(r["iter"], r["kind"]) for r in rows] == [
        ("0", "eval"), ("0", "train"), ("10", "train"), ("20", "train"), ("20", "resume"),
        ("20", "eval"), ("30", "train")]
    assert float(rows[1]["loss"]) == 6.0 and float(rows[3]["loss"]) == 5.8  # kept as they were
    assert all(rows[4][name] == "" for name in COLUMNS[2:])  # the marker: iter and kind only
    assert float(rows[5]["val_loss"]) == 1.75 and float(rows[6]["loss"]) == 1.25  # the new ones
    assert (tmp_path / "log.1.csv").read_bytes() == earlier
    assert not (tmp_path / "log.csv.tmp").exists()


def test_resume_without_a_log_starts_one(tmp_path):
    log = RunLog(str(tmp_path), CONFIG, resume_iter=100, plot=False)
    log.train(100, 2.0, 1e-4, 1.0, 1.0, None)
    log.close()
    header, rows = read_rows(tmp_path / "log.csv")
    assert header == list(COLUMNS)
    assert [(r["iter"], r["kind"]) for r in rows] == [("100", "resume"), ("100", "train")]


def test_missing_matplotlib_skips_plot_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    log = RunLog(str(tmp_path), CONFIG)
    log.eval(0, 3.0, 3.0, 1e-3)
    log.close()
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "loss.png").exists()
    assert len(read_rows(tmp_path / "log.csv")[1]) == 1  # the CSV is still written


def test_tensorboard_events(tmp_path):
    log = RunLog(str(tmp_path), CONFIG, tensorboard=True, plot=False)
    for iter_num in (0, 10, 20):
        log.train(iter_num, 4.0 - iter_num / 10, 1e-3, 100.0, 2000.0, 0.25)
    log.eval(20, 2.0, 2.5, 1e-3)
    log.close()
    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files and all(f.stat().st_size > 0 for f in event_files)

    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return  # the files exist; nothing to read them back with

    # resumed from a checkpoint at iter 10: steps after 10 are redone and must show once, new
    resumed = RunLog(str(tmp_path), CONFIG, resume_iter=10, tensorboard=True, plot=False)
    resumed.train(20, 1.0, 1e-3, 100.0, 2000.0, None)
    resumed.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "lr", "perf/ms_per_iter", "perf/tokens_per_s", "perf/mfu",
                "eval/train_loss", "eval/val_loss"):
        assert tag in tags, f"{tag} missing from {tags}"
    train_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert train_loss == [(0, pytest.approx(4.0)), (10, pytest.approx(3.0)), (20, pytest.approx(1.0))]
    assert [(e.step, e.value) for e in events.Scalars("perf/mfu")] == [(0, 0.25), (10, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("eval/val_loss")] == []  # purged: after 10


def test_missing_tensorboard_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(SystemExit, match="pip install tensorboard"):
        RunLog(str(tmp_path), CONFIG, tensorboard=True, plot=False)


def test_missing_wandb_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SystemExit, match="pip install wandb"):
        RunLog(str(tmp_path), CONFIG, wandb=True, plot=False)


def test_wandb_offline_run(tmp_path, monkeypatch):
    import wandb  # noqa: F401  (in requirements.txt: this test runs wherever the repo is installed)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # keep wandb's settings and caches inside tmp_path rather than the user's home
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    out_dir = tmp_path / "out"
    log = RunLog(str(out_dir), CONFIG, wandb=True, wandb_project="test", wandb_run_name="tiny", plot=False)
    log.train(0, 4.0, 1e-3, 100.0, 2000.0, None)
    log.eval(10, 3.0, 3.5, 1e-3)
    log.close()
    run_dirs = [d for d in (out_dir / "wandb").glob("offline-run-*") if d.is_dir()]
    assert len(run_dirs) == 1, f"expected one offline run under {out_dir / 'wandb'}, found {run_dirs}"
    assert list(run_dirs[0].glob("*.wandb")), f"no .wandb data file in {run_dirs[0]}"


def fake_run(folder, val_losses):
    """A run folder as train.py leaves it: evals every 10 iters, train rows in between."""
    log = RunLog(str(folder), CONFIG, plot=False)
    for index, val_loss in enumerate(val_losses):
        log.eval(index * 10, val_loss - 0.1, val_loss, 1e-3)
        log.train(index * 10, val_loss + 0.2, 1e-3, 10.0, 100.0, None)
        log.train(index * 10 + 5, val_loss + 0.1, 1e-3, 10.0, 100.0, None)
    log.close()


def run_plot(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "plot.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_plot_compares_two_runs(tmp_path):
    fake_run(tmp_path / "run-a", [3.0, 2.5, 2.75])
    fake_run(tmp_path / "run-b", [3.5, 3.25, 2.0])
    out_png = tmp_path / "figs" / "compare.png"
    # one run given as a folder, the other as its log.csv
    result = run_plot("run-a", "run-b/log.csv", f"--out={out_png}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_png(out_png)
    assert str(out_png) in result.stdout

    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert lines["run"][:3] == ["run", "last", "iter"]
    assert lines["run-a"][1:] == ["25", "2.5000", "2.7500"]  # last iter, best val, final val
    assert lines["run-b"][1:] == ["25", "2.0000", "2.0000"]


def test_plot_metric_train_loss(tmp_path):
    fake_run(tmp_path / "run-a", [3.0, 2.5, 2.75])
    result = run_plot("run-a", "--out=c.png", "--metric=train_loss", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "best train_loss" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("run-a"))
    assert row[1:] == ["25", "2.4000", "2.6500"]


def test_plot_missing_run_is_a_one_line_error(tmp_path):
    fake_run(tmp_path / "run-a", [3.0])
    result = run_plot("run-a", "no-such-run", "--out=c.png", cwd=tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "no-such-run" in message and "train.py" in message
    assert not (tmp_path / "c.png").exists()
