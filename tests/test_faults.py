"""
Faults and untrusted inputs, tried the way they happen: two runs on one folder, a run killed
with kill -9, a new run in a folder that holds an old one, a Hugging Face folder that asks to run
its own code, a file cut short. Organised by the principle each part checks (issue #26):

  1. an out_dir belongs to one run at a time         (smallgpt/lock.py)
  2. nothing already saved is lost                    (smallgpt/runlog.py: log.csv kept aside)
  3. untrusted inputs are never executed              (smallgpt/hf: trust_remote_code=False)
  4. faults and mistakes are one line                 (workbench booleans, a cut safetensors)
  5. every setting has a range, every schedule works  (runsetup.check_settings, runstate.get_lr)
  6. checkpoints are verified                         (checkpoint.load_checkpoint: the zip's CRCs)
  7. a resume checks identity                         (runsetup.load_resume_checkpoint)
  8. a resume says which newer checkpoint it replaces
  9. more faults, one line each                       (weights only, a full disk, prepare.py again)
 10. every rank agrees, none waits forever            (two loopback nodes under torchrun; slow)

    python -m pytest tests/test_faults.py -q -n 2
    python -m pytest tests/test_faults.py -q -m "not slow"   # without torchrun

CPU only, offline. The lock tests start small Python processes that import only smallgpt.lock,
so they take a fraction of a second each; the train.py ones a few seconds each.
"""

import ast
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, error_lines, run_script, run_train, script_env, train_args

from smallgpt.lock import (LOCK_NAME, RunLockError, acquire_run_lock, read_holder,  # noqa: E402
                           remove_stale_temp_files_under_lock)
from smallgpt.runlog import RunLog, read_log  # noqa: E402

# ============================================================================ 1. one run per out_dir

# A stand-in for a training run: takes out_dir's lock once the file `go` exists (so two of them
# start racing at the same moment), says "locked", and holds the lock until its stdin closes.
HOLDER = f"""
import os, sys, time
sys.path.insert(0, {str(REPO)!r})
from smallgpt.lock import RunLockError, acquire_run_lock
out_dir, name, go = sys.argv[1:4]
while not os.path.exists(go):
    time.sleep(0.01)
try:
    lock = acquire_run_lock(out_dir, command=name)
except RunLockError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
print("locked", flush=True)
sys.stdin.read()
"""


def start_holder(out_dir, name, go):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(out_dir), name, str(go)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def holding(out_dir, name, tmp_path):
    """A holder process that has the lock (it said so)."""
    go = tmp_path / "go-now"
    go.touch()
    process = start_holder(out_dir, name, go)
    assert process.stdout.readline().strip() == "locked", process.stderr.read()
    return process


def test_two_runs_racing_for_one_out_dir(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    go = tmp_path / "go"
    runs = {name: start_holder(out_dir, name, go) for name in ("python train.py --seed=1",
                                                              "python train.py --seed=2")}
    time.sleep(0.3)  # both interpreters up and polling for `go`
    go.touch()
    lines = {name: p.stdout.readline().strip() for name, p in runs.items()}
    winners = [name for name, line in lines.items() if line == "locked"]
    assert len(winners) == 1, lines
    (winner,), (loser,) = winners, [name for name in runs if name not in winners]
    _, err = runs[loser].communicate(timeout=30)
    assert runs[loser].returncode == 1
    message = err.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"out_dir {out_dir} is in use by the run started "), message
    assert f"(pid {runs[winner].pid}): {winner};" in message, message
    assert message.endswith("wait for it or pass another --out_dir"), message
    runs[winner].communicate(input="", timeout=30)  # its stdin closes: it releases and exits
    assert runs[winner].returncode == 0
    acquire_run_lock(str(out_dir)).release()  # and the folder is free again


def test_a_run_killed_with_sigkill_leaves_no_lock(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    holder = holding(out_dir, "python train.py config/train_add.py", tmp_path)
    with pytest.raises(RunLockError, match=rf"\(pid {holder.pid}\): python train\.py config/"):
        acquire_run_lock(str(out_dir))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert read_holder(out_dir / LOCK_NAME)["pid"] == str(holder.pid)  # its details stay behind
    lock = acquire_run_lock(str(out_dir), command="the next run")  # and block nothing
    holder_now = read_holder(out_dir / LOCK_NAME)
    assert (holder_now["pid"], holder_now["command"]) == (str(os.getpid()), "the next run")
    lock.release()
    assert (out_dir / LOCK_NAME).read_text() == ""  # a clean exit clears them


def test_a_lock_file_of_a_dead_run_elsewhere_does_not_block(tmp_path):
    """A run.lock copied along with a run folder, or left by a container that is gone: only a
    live flock counts, never the pid written in the file (it may be anyone's on this machine)."""
    (tmp_path / LOCK_NAME).write_text(f"pid {os.getppid()}\nhost gone-container\n"
                                      f"started 2020-01-01 00:00:00+00:00\ncommand old run\n")
    with acquire_run_lock(str(tmp_path)) as lock:
        assert lock.held
        assert read_holder(tmp_path / LOCK_NAME)["pid"] == str(os.getpid())
        with pytest.raises(RunLockError, match="pid"):  # held: even this process can't take it twice
            acquire_run_lock(str(tmp_path))


def test_temp_saves_under_the_lock_are_from_dead_runs(tmp_path):
    """With the lock held, a checkpoint temp file is a dead run's whatever its pid: even one
    named after a live process (in another container that pid is someone else's)."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f"ckpt.pt.tmp.{live.pid}", "last.pt.tmp.99999999", f"last.pt.tmp.{os.getpid()}",
                 "ckpt.pt", "notes.tmp.1", "last.pt.tmp.abc"]
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        with acquire_run_lock(str(tmp_path)) as lock:
            removed = remove_stale_temp_files_under_lock(lock)
        assert removed == [f"ckpt.pt.tmp.{live.pid}", "last.pt.tmp.99999999"]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [LOCK_NAME, f"last.pt.tmp.{os.getpid()}", "ckpt.pt", "notes.tmp.1", "last.pt.tmp.abc"])
    finally:
        live.kill()
        live.wait()


def test_a_live_run_in_another_container_keeps_its_temp_save(tmp_path):
    """The other run's pid (99999999: no such process here) says nothing; its lock does. The
    start-up order lock-then-clean never reaches the cleaning while that run holds out_dir."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    holder = holding(out_dir, "python train.py (in container B)", tmp_path)
    try:
        temp = out_dir / "last.pt.tmp.99999999"
        temp.write_bytes(b"half of a checkpoint")
        with pytest.raises(RunLockError, match=r"container B"):
            lock = acquire_run_lock(str(out_dir))
            remove_stale_temp_files_under_lock(lock)
        assert temp.read_bytes() == b"half of a checkpoint"
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_holds_across_pid_namespaces(tmp_path):
    """A holder in a pid namespace of its own (what a container is, for pids) still excludes
    us, and the pid it writes is its own view (1): the lock, not the pid, decides."""
    try:
        subprocess.run(["unshare", "--pid", "--fork", "true"], check=True, capture_output=True,
                       timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("unshare --pid is not available here (needs root or user namespaces)")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (tmp_path / "go").touch()
    holder = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", HOLDER,
                               str(out_dir), "train in container B", str(tmp_path / "go")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=r"\(pid 1\): train in container B;"):
            acquire_run_lock(str(out_dir))
    finally:
        holder.communicate(input="", timeout=30)
    acquire_run_lock(str(out_dir)).release()


def test_an_out_dir_the_run_cannot_write_is_one_line(tmp_path, monkeypatch):
    import errno

    def read_only(path, flags, mode=0o777):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "open", read_only)  # as on a read-only mount (root ignores chmod)
    with pytest.raises(RunLockError) as refused:
        acquire_run_lock(str(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and "Read-only file system" in message and "--out_dir" in message


def test_without_file_locks_nothing_is_removed_and_it_says_so(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "ckpt.pt.tmp.99999999").write_bytes(b"x")
    lock = acquire_run_lock(str(tmp_path))
    assert not lock.held
    assert remove_stale_temp_files_under_lock(lock) == []
    assert (tmp_path / "ckpt.pt.tmp.99999999").exists()
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1 and "no file locks" in warning, warning


def test_train_py_on_an_out_dir_in_use_is_one_line(char_dataset, tmp_path):
    out_dir = tmp_path / "busy"
    out_dir.mkdir()
    holder = holding(out_dir, "python train.py --max_iters=5000 (the first run)", tmp_path)
    try:
        result = run_train(char_dataset, out_dir, "--max_iters=1", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0, "a second run trained in an out_dir that is in use"
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-2000:]
    assert f"(pid {holder.pid}): python train.py --max_iters=5000 (the first run);" in lines[0]
    assert not (out_dir / "log.csv").exists() and not (out_dir / "ckpt.pt").exists()


# ============================================================================ 2. nothing saved is lost

SETTINGS = {"dataset": "faults", "n_layer": 1, "n_head": 1, "n_embd": 16}


def snapshot(folder):
    """Every file under `folder`: {relative path: bytes}."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def log_a_run(folder, losses, start=0, every=7, resume_iter=None, plot=False, **options):
    """A run of len(losses) logged steps, `every` iterations apart, with an eval every other."""
    log = RunLog(str(folder), SETTINGS, resume_iter=resume_iter, plot=plot, **options)
    for index, loss in enumerate(losses):
        iter_num = start + index * every
        if index % 2 == 0:
            log.eval(iter_num, loss + 0.05, loss + 0.125, 3e-4)
        log.train(iter_num, loss, 3e-4, 12.5, 800.0, None)
    log.close()


def losses_in(csv_path):
    return [row["loss"] for row in read_log(csv_path) if row["kind"] == "train"]


def test_three_runs_in_one_out_dir_lose_no_row(tmp_path, capsys):
    log_a_run(tmp_path, [4.125, 3.875, 3.625], plot=True)  # one with a loss.png to keep
    first = snapshot(tmp_path)
    assert "loss.png" in first
    log_a_run(tmp_path, [3.25, 3.0])
    second = snapshot(tmp_path)
    log_a_run(tmp_path, [2.75])
    assert (tmp_path / "log.1.csv").read_bytes() == first["log.csv"]
    assert (tmp_path / "loss.1.png").read_bytes() == first["loss.png"]
    assert (tmp_path / "log.2.csv").read_bytes() == second["log.csv"]
    assert losses_in(tmp_path / "log.csv") == [2.75]
    assert "a new run starts here; kept the earlier log.csv as log.2.csv" in capsys.readouterr().out


def test_a_run_that_stops_before_its_first_row_changes_nothing(tmp_path):
    log_a_run(tmp_path, [5.5, 5.0, 4.5])
    before = snapshot(tmp_path)
    RunLog(str(tmp_path), SETTINGS, plot=False).close()  # a new run, stopped at start-up
    RunLog(str(tmp_path), SETTINGS, resume_iter=7, plot=False).close()  # a resume, the same
    assert snapshot(tmp_path) == before


def test_evaluate_only_writes_and_deletes_nothing(tmp_path):
    log_a_run(tmp_path, [3.5, 3.25, 3.0, 2.75], plot=True)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"earlier events")
    before = snapshot(tmp_path)
    for resume_iter in (21, 7, None):  # at the end, from an older checkpoint, from weights
        log = RunLog(str(tmp_path), SETTINGS, resume_iter=resume_iter, tensorboard=True,
                     evaluate_only=True)
        log.eval(resume_iter or 0, 2.5, 2.625, 0.0)
        with pytest.raises(AssertionError, match="evaluate-only"):
            log.train(22, 2.5, 3e-4, 12.5, 800.0, None)
        log.close()
        assert snapshot(tmp_path) == before


def test_resume_from_an_older_checkpoint_keeps_the_later_rows(tmp_path):
    log_a_run(tmp_path, [4.0, 3.5, 3.25, 3.0, 2.875, 2.75])  # iterations 0 .. 35
    before = snapshot(tmp_path)
    log_a_run(tmp_path, [3.125, 2.5], start=14, resume_iter=14)  # ckpt.pt was at 14
    assert (tmp_path / "log.1.csv").read_bytes() == before["log.csv"]
    rows = [(r["iter"], r["kind"], r["loss"]) for r in read_log(tmp_path / "log.csv")]
    assert rows == [(0, "eval", None), (0, "train", 4.0), (7, "train", 3.5), (14, "train", 3.25),
                    (14, "resume", None), (14, "eval", None), (14, "train", 3.125),
                    (21, "train", 2.5)]


def test_resume_at_the_last_checkpoint_marks_it_and_keeps_one_log(tmp_path):
    log_a_run(tmp_path, [4.0, 3.5, 3.25], every=5)  # iterations 0, 5, 10; evals at 0 and 10
    earlier = read_log(tmp_path / "log.csv")
    log_a_run(tmp_path, [3.0], start=10, every=5, resume_iter=10)
    rows = read_log(tmp_path / "log.csv")
    assert rows[:4] == [r for r in earlier if (r["iter"], r["kind"]) != (10, "eval")]
    assert [(r["iter"], r["kind"]) for r in rows[4:]] == [(10, "resume"), (10, "eval"), (10, "train")]
    assert not list(tmp_path.glob("log.*.csv"))


def test_plot_py_reads_a_log_with_resume_rows(tmp_path, capsys):
    import plot
    log_a_run(tmp_path / "run", [4.0, 3.5, 3.25, 3.0])
    log_a_run(tmp_path / "run", [3.125, 2.5, 2.25], start=14, resume_iter=14)
    rows = read_log(tmp_path / "run" / "log.csv")
    assert plot.summarize(rows, "val_loss") == (28, pytest.approx(2.25 + 0.125), 2.25 + 0.125)
    plot.main([str(tmp_path / "run"), f"--out={tmp_path / 'compare.png'}"])
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert capsys.readouterr().out.splitlines()[-1].split() == ["run", "28", "2.3750", "2.3750"]


@pytest.fixture(scope="module")
def small_run(char_dataset, tmp_path_factory):
    """A train.py run of 4 iterations (evals and checkpoints at 0, 2, 4) to copy and go on with."""
    root = tmp_path_factory.mktemp("small_run")
    result = run_train(char_dataset, root / "out", "--max_iters=4", "--eval_interval=2",
                       cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "out"


def copy_of(small_run, tmp_path):
    out_dir = tmp_path / "out"
    shutil.copytree(small_run, out_dir)
    return out_dir


def test_train_py_new_run_keeps_the_earlier_log(small_run, char_dataset, tmp_path):
    out_dir = copy_of(small_run, tmp_path)
    before = snapshot(out_dir)
    result = run_train(char_dataset, out_dir, "--max_iters=2", "--eval_interval=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out_dir / "log.1.csv").read_bytes() == before["log.csv"]
    assert (out_dir / "loss.1.png").read_bytes() == before["loss.png"]
    assert [r["iter"] for r in read_log(out_dir / "log.csv") if r["kind"] == "train"] == [1, 2]


def test_train_py_resume_marks_where_it_resumed(small_run, char_dataset, tmp_path):
    out_dir = copy_of(small_run, tmp_path)
    earlier = read_log(out_dir / "log.csv")
    result = run_train(char_dataset, out_dir, "--init_from=resume",
                       "--resume_checkpoint_name=last.pt", "--max_iters=6", "--eval_interval=2",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_log(out_dir / "log.csv")
    kept = [r for r in earlier if r["iter"] < 4 or r["kind"] == "train"]  # all but the eval at 4
    assert rows[:len(kept)] == kept
    assert (rows[len(kept)]["iter"], rows[len(kept)]["kind"]) == (4, "resume")
    redone = rows[len(kept) + 1]
    assert (redone["iter"], redone["kind"]) == (4, "eval")
    assert redone["val_loss"] == [r for r in earlier if r["kind"] == "eval"][-1]["val_loss"]
    assert [r["iter"] for r in rows[len(kept) + 2:] if r["kind"] == "train"] == [5, 6]
    assert not list(out_dir.glob("log.*.csv"))


def test_train_py_evaluate_only_leaves_the_run_as_it_was(small_run, char_dataset, tmp_path):
    """The README's evaluate-only command prints the losses and changes nothing in out_dir."""
    out_dir = copy_of(small_run, tmp_path)
    before = snapshot(out_dir)
    result = run_train(char_dataset, out_dir, "--init_from=resume", "--max_iters=0",
                       "--eval_interval=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 4: train loss" in result.stdout
    after = snapshot(out_dir)
    for files in (before, after):
        files.pop(LOCK_NAME, None)  # the run lock (empty between runs), not part of the run
    assert after == before


# ============================================================================ 3. untrusted inputs never run

EVIL_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil"
"""
EVIL_CONFIG = ('{"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", '
               '"AutoModelForCausalLM": "evil.EvilModel"}, "n_layer": 2}')
HUB_COMMIT = "0f" * 20

# load each source given, printing one line per refusal, as train.py's and sample.py's fail() do
LOAD_EACH = """
import sys
sys.path.insert(0, {repo!r})
from model import GPT
for source in sys.argv[1:]:
    try:
        GPT.from_pretrained(source)
        print("loaded", source)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"refused: {{e}}")
"""


@pytest.fixture
def evil_model(tmp_path):
    """A model that asks transformers to import its evil.py: as a local folder and as a hub
    repo in an offline cache. Returns (sources, env, marker the code would write)."""
    marker = tmp_path / "MARKER"
    folder = tmp_path / "evil-model"
    snapshot_dir = tmp_path / "hub" / "models--someone--evil" / "snapshots" / HUB_COMMIT
    for where in (folder, snapshot_dir):
        where.mkdir(parents=True)
        (where / "config.json").write_text(EVIL_CONFIG)
        (where / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    (tmp_path / "hub" / "models--someone--evil" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--evil" / "refs" / "main").write_text(HUB_COMMIT)
    env = script_env(HF_HUB_OFFLINE=1, HF_HUB_CACHE=tmp_path / "hub",
                     HF_MODULES_CACHE=tmp_path / "modules")
    return [str(folder), "someone/evil"], env, marker


def test_a_model_with_its_own_code_is_refused_even_answering_y(evil_model, tmp_path):
    """transformers used to ask "Do you wish to run the custom code? [y/N]"; y ran evil.py."""
    sources, env, marker = evil_model
    result = subprocess.run([sys.executable, "-c", LOAD_EACH.format(repo=str(REPO)), *sources],
                            input="y\ny\n", capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not marker.exists(), "the model folder's code ran"
    assert "[y/N]" not in result.stdout + result.stderr  # transformers never asked
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused: ") for line in lines), lines
    assert sources[0] in lines[0] and "auto_map" in lines[0]
    assert lines[1].startswith("refused: someone/evil ") and "running code" in lines[1]
    assert not list((tmp_path / "modules").rglob("evil.py"))  # not even copied to be imported


def test_a_model_with_its_own_code_is_refused_in_one_line_without_a_terminal(evil_model, tmp_path,
                                                                            monkeypatch):
    from smallgpt.hf.convert import load_hf
    sources, env, marker = evil_model
    # the env of a subprocess, applied where this process's hub client and transformers keep it
    import huggingface_hub.constants
    import transformers.dynamic_module_utils
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", env["HF_MODULES_CACHE"])
    for source in sources:
        with pytest.raises(ValueError) as refused:
            load_hf(source)
        assert "\n" not in str(refused.value) and source in str(refused.value)
    assert not marker.exists()


def transformers_loads(path):
    """(line, receiver, keywords) of each X.from_pretrained(...) call on a transformers class."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "from_pretrained":
            receiver = ast.unparse(node.func.value)
            if "transformers" in receiver or receiver.startswith("Auto"):
                calls.append((node.lineno, receiver, {k.arg: k.value for k in node.keywords}))
    return calls


def test_every_transformers_loader_is_called_with_trust_remote_code_false():
    files = [*sorted((REPO / "smallgpt").rglob("*.py")), *sorted(REPO.glob("*.py"))]
    calls = [(path.relative_to(REPO), *call) for path in files for call in transformers_loads(path)]
    assert len(calls) >= 6, calls  # convert.py 3, common.py 1, export.py 1, bench.py 1
    missing = [f"{path}:{line} {receiver}.from_pretrained" for path, line, receiver, keywords in calls
               if not (isinstance(keywords.get("trust_remote_code"), ast.Constant)
                       and keywords["trust_remote_code"].value is False)]
    assert not missing, f"without trust_remote_code=False: {missing}"


# ============================================================================ 4. faults are one line

def tiny_hf_folder(folder):
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=96,
                        bos_token_id=None, eos_token_id=None)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder / "model.safetensors"


@pytest.mark.parametrize("cut", ["half", "header", "last-byte"])
def test_a_cut_model_safetensors_is_one_line_naming_it(tmp_path, cut):
    from smallgpt.hf.convert import load_hf
    weights = tiny_hf_folder(tmp_path / "hf")
    data = weights.read_bytes()
    weights.write_bytes(data[:{"half": len(data) // 2, "header": 6, "last-byte": len(data) - 1}[cut]])
    with pytest.raises(ValueError) as refused:
        load_hf(str(tmp_path / "hf"))
    message = str(refused.value)
    assert "\n" not in message and str(weights) in message and "truncated or corrupt" in message


def test_workbench_passes_booleans_as_train_py_reads_them(tmp_path, monkeypatch, capsys):
    import workbench
    monkeypatch.setenv("NANOGPT_DRY_RUN", "1")  # train.py prints its settings and stops
    run = workbench.train(cwd=str(tmp_path), echo=True, compile=True, always_save_checkpoint=False,
                          decay_lr=False, fast_cpu=False, max_iters=17)
    settings = capsys.readouterr().out
    for line in ("compile = True", "always_save_checkpoint = False", "decay_lr = False",
                 "fast_cpu = False", "max_iters = 17"):
        assert f"  {line}\n" in settings, settings
    assert list(run) == []


def test_workbench_reads_out_dir_as_train_py_does(tmp_path, monkeypatch):
    """A config file that builds on train.py's defaults (config/cpu_small.py reads out_dir) is
    read by train.py itself, not run in the notebook's process."""
    import builtins
    import workbench
    monkeypatch.setenv("NANOGPT_DRY_RUN", "1")
    (tmp_path / "mine.py").write_text("import builtins\nbuiltins.FAULTS_CONFIG_RAN_HERE = True\n"
                                      "out_dir = out_dir + '-mine'\nbatch_size = 3\n")
    assert workbench.train("mine.py", cwd=str(tmp_path)).out_dir == str(tmp_path / "out-mine")
    assert not hasattr(builtins, "FAULTS_CONFIG_RAN_HERE")
    train_py = [sys.executable, str(REPO / "train.py")]
    configs = [str(REPO / "config" / name) for name in ("train_shakespeare_char.py", "cpu_small.py")]
    assert workbench._dry_run_setting([*train_py, *configs], str(tmp_path), "out_dir") == \
        "out-shakespeare-small-char"


# ----------------------------------------------------------------------------- wrong tokens for GPT-2
def test_gpt2_weights_on_a_character_dataset_is_one_line(char_dataset, tmp_path):
    """GPT-2's weights read GPT-2 BPE ids; a character dataset's ids would train silently wrong.
    The name is refused before anything is downloaded (this test runs offline)."""
    result = run_train(char_dataset, tmp_path / "out", "--init_from=gpt2", "--max_iters=1",
                       cwd=tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "tokenized with 'char'" in lines[0] and "data/don" in lines[0], lines[0]
    assert not (tmp_path / "out" / "ckpt.pt").exists()


# ============================================================================ 5. every setting has a range

def nanogpt_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's schedule, written out here as the reference for the settings it handles
    (warmup_iters < lr_decay_iters): linear warmup, cosine to min_lr, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


@pytest.mark.parametrize("warmup_iters", [0, 1, 3, 10, 2000])
@pytest.mark.parametrize("lr_decay_iters", [0, 1, 3, 10, 2000])
def test_every_schedule_gives_a_finite_learning_rate(warmup_iters, lr_decay_iters):
    from smallgpt.runstate import get_lr
    learning_rate, min_lr = 6e-4, 6e-5
    end = max(warmup_iters, lr_decay_iters)
    iters = sorted({0, 1, 2, warmup_iters - 1, warmup_iters, warmup_iters + 1, lr_decay_iters - 1,
                    lr_decay_iters, lr_decay_iters + 1, end, end + 1, 5000} - {-1})
    rates = [get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr) for it in iters]
    assert all(math.isfinite(r) and 0 < r <= learning_rate for r in rates), list(zip(iters, rates))
    for it, rate in zip(iters, rates):
        if warmup_iters < lr_decay_iters or it < warmup_iters:  # where nanoGPT's is defined
            assert rate == pytest.approx(nanogpt_lr(it, learning_rate, warmup_iters,
                                                    lr_decay_iters, min_lr), rel=1e-12)
        else:  # warmup reaches lr_decay_iters: no cosine part, min_lr once warmup is over
            assert rate == min_lr, (it, rate)


def test_warmup_as_long_as_the_decay_trains_and_saves(char_dataset, tmp_path):
    """The issue's command, small: max_iters = lr_decay_iters = warmup_iters. It used to divide
    by zero at the last iteration, before its only eval and save."""
    out_dir = tmp_path / "out"
    result = run_train(char_dataset, out_dir, "--max_iters=3", "--warmup_iters=3",
                       "--lr_decay_iters=3", "--eval_interval=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out_dir / "ckpt.pt").exists() and (out_dir / "last.pt").exists()
    assert "step 3: train loss" in result.stdout


BAD_SETTINGS = [  # (the setting, words the one line must hold)
    ("--grad_clip=-1", "grad_clip"), ("--grad_clip=1e999", "grad_clip"),
    ("--weight_decay=-0.5", "weight_decay"), ("--learning_rate=-1e-9", "learning_rate"),
    ("--learning_rate=-3e-4", "learning_rate"), ("--learning_rate=1e999", "learning_rate"),
    ("--min_lr=-1e-5", "min_lr"), ("--beta1=1.0", "beta1"), ("--beta2=1.5", "beta2"),
    ("--beta2=-0.1", "beta2"), ("--n_layer=0", "n_layer"), ("--n_head=0", "n_head"),
    ("--n_embd=0", "n_embd"), ("--n_embd=30", "n_head"), ("--dropout=1.0", "dropout"),
    ("--dropout=-0.2", "dropout"), ("--batch_size=0", "batch_size"), ("--block_size=-4", "block_size"),
    ("--gradient_accumulation_steps=0", "gradient_accumulation_steps"),
    ("--eval_iters=0", "eval_iters"), ("--eval_interval=0", "eval_interval"),
    ("--warmup_iters=-5", "warmup_iters"), ("--lr_decay_iters=-1", "lr_decay_iters"),
    ("--peak_flops=-1.0", "peak_flops"), ("--device=gpu", "cuda"), ("--device=cpu0", "cpu"),
]


def settings_error(setting):
    """The one line train.py's start-up checks give for `setting` (--key=value), read the way
    train.py reads it (configurator, then check_settings and the device choice), or None."""
    import configurator
    from smallgpt.device import pick_device
    from smallgpt.errors import UserError
    from smallgpt.runsetup import check_settings
    from test_configurator import TRAIN, train_defaults
    config = configurator.configure(train_defaults(), [setting], script=str(TRAIN), echo=False)
    try:
        check_settings(config)
        pick_device(config['device'])
    except UserError as e:
        return str(e)
    return None


@pytest.mark.parametrize("setting, words", BAD_SETTINGS, ids=[s for s, _ in BAD_SETTINGS])
def test_a_setting_out_of_range_is_one_line(setting, words):
    message = settings_error(setting)
    assert message is not None, f"{setting} was accepted"
    assert "\n" not in message and words in message, message
    assert setting[2:].split("=")[0] in message or "device" in setting, message


def test_the_ranges_keep_the_defaults_and_their_edges():
    for setting in ("--max_iters=5", "--grad_clip=0", "--weight_decay=0", "--min_lr=0", "--beta1=0",
                    "--dropout=0.5", "--warmup_iters=0", "--lr_decay_iters=0", "--peak_flops=0",
                    "--device=cuda:1", "--device=mps", "--device=auto", "--n_embd=24", "--n_head=6"):
        message = settings_error(setting)  # a device this machine lacks: the next check's line
        assert message is None or "--device=cpu" in message, (setting, message)


@pytest.mark.parametrize("setting", ["--grad_clip=-1", "--n_head=0", "--device=gpu"])
def test_train_py_stops_on_a_setting_out_of_range_before_writing(char_dataset, tmp_path, setting):
    out_dir = tmp_path / "out"
    result = run_train(char_dataset, out_dir, "--max_iters=2", setting, cwd=tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode != 0, result.stdout[-1000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert setting[2:].split("=")[0] in lines[0], lines[0]
    assert not out_dir.exists()


# ============================================================================ 6. checkpoints are verified

def flip_bytes_in_the_middle(path, count=16):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0x5A for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def test_a_corrupt_checkpoint_is_one_line_in_every_script(small_run, char_dataset, tmp_path):
    """A few flipped bytes inside the weights: torch.load alone reads them as numbers (the run
    resumed with exit 0 and re-saved both files from them). The zip's CRCs catch it."""
    out_dir = copy_of(small_run, tmp_path)
    flip_bytes_in_the_middle(out_dir / "ckpt.pt")
    before = snapshot(out_dir)
    runs = {
        "train.py": run_train(char_dataset, out_dir, "--init_from=resume", "--max_iters=6",
                              "--eval_interval=2", cwd=tmp_path),
        "sample.py": run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu",
                                "--num_samples=1", "--max_new_tokens=5", "--start=A", cwd=tmp_path),
        "eval.py": run_script("eval.py", f"--out_dir={out_dir}", "--device=cpu",
                              f"--dataset={char_dataset}", cwd=tmp_path),
    }
    for script, result in runs.items():
        lines = error_lines(result.stderr)
        assert result.returncode != 0, f"{script} used a corrupt checkpoint"
        assert len(lines) == 1, (script, result.stderr[-2000:])
        assert f"{out_dir / 'ckpt.pt'} is corrupt" in lines[0], (script, lines[0])
        assert "last.pt" in lines[0], (script, lines[0])  # the other checkpoint, named
    after = snapshot(out_dir)
    for files in (before, after):
        files.pop(LOCK_NAME, None)
    assert after == before  # nothing re-saved, no log rows


def test_the_crc_check_names_no_other_checkpoint_when_there_is_none(tmp_path):
    import torch
    from smallgpt.checkpoint import CheckpointError, load_checkpoint
    path = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.arange(50_000.0)}, "model_args": {}}, path)
    assert load_checkpoint(str(path))["model"]["w"][-1] == 49_999.0  # intact: loads
    flip_bytes_in_the_middle(path, count=4)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(str(path))
    message = str(refused.value)
    assert "\n" not in message and f"{path} is corrupt" in message and "ckpt.pt" not in message


# ============================================================================ 7. resume checks identity

@pytest.fixture(scope="module")
def other_vocabulary(tmp_path_factory):
    """A character dataset re-prepared from a text with 'é' where the other has 'e': as many
    characters as the checkpoint's, so the sizes agree while most ids mean other characters
    (resuming on it trained in silence)."""
    import smallgpt.prepare
    from conftest import make_text
    root = tmp_path_factory.mktemp("other_vocabulary")
    (root / "input.txt").write_text(make_text(seed=3).replace("e", "é"),
                                    encoding="utf-8")
    smallgpt.prepare.prepare_char(str(root / "other"), None, [f"--input={root / 'input.txt'}"])
    return root / "other"


@pytest.mark.parametrize("how", [("--init_from=resume",), ("--init_from=auto",),
                                 ("--init_from=resume", "--resume_checkpoint_name=last.pt")])
def test_resume_on_another_vocabulary_is_one_line_and_changes_nothing(small_run, other_vocabulary,
                                                                      tmp_path, how):
    out_dir = copy_of(small_run, tmp_path)
    before = snapshot(out_dir)
    result = run_train(other_vocabulary, out_dir, *how, "--max_iters=6", "--eval_interval=2",
                       cwd=tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode != 0, "resumed on another vocabulary"
    assert len(lines) == 1, result.stderr[-2000:]
    assert "tokenized differently" in lines[0] and "characters" in lines[0], lines[0]
    assert "--out_dir" in lines[0] and "--dataset" in lines[0], lines[0]  # what to do instead
    after = snapshot(out_dir)
    for files in (before, after):
        files.pop(LOCK_NAME, None)
    assert after == before


def test_eval_py_names_the_same_difference(small_run, other_vocabulary, tmp_path):
    result = run_script("eval.py", f"--out_dir={small_run}", "--device=cpu",
                        f"--dataset={other_vocabulary}", cwd=tmp_path)
    lines = error_lines(result.stderr)
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert "tokenized differently" in lines[0] and "characters" in lines[0], lines[0]


def test_vocabulary_difference_in_words():
    from smallgpt.tokenizer import vocabulary_difference
    char = {"tokenizer": "char", "vocab_size": 3, "chars": ["a", "b", "c"]}
    assert vocabulary_difference(char, dict(char)) is None
    assert vocabulary_difference(None, None) is None  # both GPT-2 BPE (nanoGPT: no meta)
    assert vocabulary_difference(None, {"tokenizer": "tiktoken", "encoding": "gpt2",
                                        "vocab_size": 50257}) is None
    moved = vocabulary_difference(char, {**char, "chars": ["a", "c", "b"]})
    assert moved is not None and "3 characters" in moved
    grown = vocabulary_difference(char, {**char, "vocab_size": 4, "chars": ["a", "b", "c", "é"]})
    assert "'é'" in grown and "3" in grown and "4" in grown, grown
    assert "gpt2" in vocabulary_difference(char, None)
    bpe = {"tokenizer": "bpe", "vocab_size": 512, "tokenizer_sha256": "ab" * 32}
    assert vocabulary_difference(bpe, {**bpe, "tokenizer_sha256": "cd" * 32}) is not None
    assert vocabulary_difference(bpe, dict(bpe)) is None


# ============================================================================ 8. which checkpoint

def test_resuming_from_ckpt_pt_names_a_newer_last_pt(small_run, char_dataset, tmp_path):
    import torch
    out_dir = copy_of(small_run, tmp_path)
    later = torch.load(out_dir / "last.pt", weights_only=True)
    later["iter_num"] = 9  # as if the run went on past its best val loss
    torch.save(later, out_dir / "last.pt")
    result = run_train(char_dataset, out_dir, "--init_from=resume", "--max_iters=5",
                       "--eval_interval=100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "last.pt" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), result.stderr[-2000:]
    assert "iteration 4" in warnings[0] and "iteration 9" in warnings[0], warnings[0]
    assert "--init_from=resume --resume_checkpoint_name=last.pt" in warnings[0], warnings[0]
    quiet = run_train(char_dataset, out_dir, "--init_from=resume", "--max_iters=6",
                      "--resume_checkpoint_name=last.pt", "--eval_interval=100", cwd=tmp_path)
    assert quiet.returncode == 0 and "warning: resuming" not in quiet.stderr, quiet.stderr[-2000:]


# ============================================================================ 9. more faults, one line each

def test_a_checkpoint_of_weights_only_is_one_line(small_run, char_dataset, tmp_path):
    """A state_dict saved alone, and {'model', 'model_args'} without the training state: what
    each is and what it can be used for, instead of KeyError: 'iter_num'."""
    import torch
    out_dir = copy_of(small_run, tmp_path)
    full = torch.load(out_dir / "ckpt.pt", weights_only=True)
    torch.save({"model": full["model"], "model_args": full["model_args"], "meta": full["meta"]},
               out_dir / "ckpt.pt")
    torch.save(full["model"], out_dir / "last.pt")  # the bare state_dict
    for name, words in (("ckpt.pt", "no training state"), ("last.pt", "state_dict")):
        result = run_train(char_dataset, out_dir, "--init_from=resume", "--max_iters=6",
                           f"--resume_checkpoint_name={name}", cwd=tmp_path)
        lines = error_lines(result.stderr)
        assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
        assert str(out_dir / name) in lines[0] and words in lines[0], lines[0]
    sample = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1",
                        "--max_new_tokens=5", "--start=A", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr[-2000:]  # weights are enough to sample


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as on a full disk."""

    def __init__(self, path, room):
        import io
        self.file, self.room = io.open(path, "wb"), room  # io.open: builtins.open is patched

    def write(self, data):
        import errno
        if self.file.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import builtins

    import torch
    from smallgpt import checkpoint
    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint({"iter_num": 1}, str(path))
    before = path.read_bytes()
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *args, **kwargs:
                        FullDisk(file, 4096) if str(file).startswith(f"{path}.tmp") else
                        real_open(file, mode, *args, **kwargs))
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.save_checkpoint({"iter_num": 2, "model": {"w": torch.zeros(250_000)}}, str(path))
    message = str(refused.value)
    assert "\n" not in message and "No space left" in message and "1.0 MB" in message, message
    assert f"{path} is intact" in message, message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left


def test_train_py_with_a_file_size_limit_stops_in_one_line(small_run, char_dataset, tmp_path):
    """A real write error from the kernel (EFBIG: RLIMIT_FSIZE, the closest to a full disk a
    test can make): the save fails, the run says so in one line, the old checkpoints stay."""
    import resource
    out_dir = copy_of(small_run, tmp_path)
    before = {name: (out_dir / name).read_bytes() for name in ("ckpt.pt", "last.pt")}
    limit = min(len(data) for data in before.values()) // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, str(REPO / "train.py"),
                             *train_args(char_dataset, out_dir, "--init_from=resume",
                                         "--resume_checkpoint_name=last.pt", "--max_iters=6",
                                         "--eval_interval=100")],
                            cwd=tmp_path, env=script_env(), capture_output=True, text=True,
                            timeout=180, preexec_fn=small_files)
    lines = error_lines(result.stderr)
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert "File too large" in lines[0] and "is intact" in lines[0], lines[0]
    assert {name: (out_dir / name).read_bytes() for name in before} == before
    assert not [p.name for p in out_dir.iterdir() if ".tmp." in p.name]


def test_prepare_py_run_again_leaves_a_reader_its_old_data(tmp_path):
    """A training run memory-maps train.bin; prepare.py run again meanwhile writes new files
    and renames them into place, so the run keeps reading the old data whole."""
    import numpy as np

    import smallgpt.prepare
    from conftest import make_text
    for name, seed in (("first.txt", 0), ("second.txt", 1)):
        (tmp_path / name).write_text(make_text(20_000, seed=seed), encoding="utf-8")
    folder = tmp_path / "data"
    smallgpt.prepare.prepare_char(str(folder), None, [f"--input={tmp_path / 'first.txt'}"])
    reading = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    old = np.array(reading)
    smallgpt.prepare.prepare_char(str(folder), None, [f"--input={tmp_path / 'second.txt'}"])
    new = np.fromfile(folder / "train.bin", dtype=np.uint16)
    assert not np.array_equal(new[:len(old)], old[:len(new)])  # the file now holds other ids
    assert np.array_equal(np.array(reading), old)  # the reader still sees the old ones whole


# ============================================================================ 10. every rank agrees

def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(char_dataset, tmp_path, *extra, timeout=240):
    """README's two-node launch on one machine, one process per node, each node run from a
    folder of its own (tmp_path/node0, tmp_path/node1) with --out_dir=out: two machines without
    shared storage, each seeing its own out/. Returns [(returncode, stdout, stderr)] per node."""
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--nnodes=2",
         f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
         str(REPO / "train.py"), *train_args(char_dataset, "out", "--gradient_accumulation_steps=2",
                                             *extra)],
        cwd=tmp_path / f"node{rank}", env=script_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [(node.returncode, *output) for node, output in zip(nodes, outputs)]


@pytest.mark.slow
@pytest.mark.parametrize("node1_has", ["a copy", "nothing"])
def test_init_from_auto_is_decided_by_rank_0(small_run, char_dataset, tmp_path, node1_has):
    """Node 0 has out/last.pt (iteration 4), node 1 a copy of it or nothing. Each rank used to
    decide alone: rank 1 started from scratch, ran 2 iterations more than rank 0, and waited
    in a collective rank 0 never joined (gloo: 30 minutes). Rank 0 decides now: with a copy
    both resume; without one, rank 1's missing file stops both ranks at once, in one line."""
    shutil.copytree(small_run, tmp_path / "node0" / "out")
    (tmp_path / "node1").mkdir()
    if node1_has == "a copy":
        shutil.copytree(small_run, tmp_path / "node1" / "out")
    before = snapshot(tmp_path / "node0" / "out")
    (code0, out0, err0), (code1, out1, err1) = two_nodes(
        char_dataset, tmp_path, "--init_from=auto", "--max_iters=6", "--eval_interval=2",
        "--dist_timeout_s=60")
    if node1_has == "a copy":
        assert code0 == code1 == 0, err0[-2000:] + err1[-2000:]
        assert "resuming from last.pt" in out0 and "step 6: train loss" in out0
        assert torch_iter(tmp_path / "node0" / "out" / "last.pt") == 6
        return
    assert code0 != 0 and code1 != 0
    lines = [line for line in err0.splitlines() if line.startswith("error: ")]  # not torchrun's
    assert len(lines) == 1, err0[-3000:]
    assert 'train.py", line' not in err0, err0[-3000:]  # no traceback from the worker
    assert lines[0].startswith("error: rank 1: no checkpoint at out/last.pt"), lines[0]
    assert "every node needs the same out_dir" in lines[0], lines[0]
    after = snapshot(tmp_path / "node0" / "out")
    for files in (before, after):
        files.pop(LOCK_NAME, None)
    assert after == before


def torch_iter(path):
    import torch
    return torch.load(path, weights_only=True)["iter_num"]


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
def test_a_stuck_rank_stops_the_others_after_dist_timeout_s(char_dataset, tmp_path):
    """Rank 1's process frozen (SIGSTOP: a hung node, a stalled disk) mid-run: rank 0 waits
    dist_timeout_s in its next collective, not gloo's 30 minutes, and ends with one line."""
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--nnodes=2",
         f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
         str(REPO / "train.py"), *train_args(char_dataset, "out", "--gradient_accumulation_steps=2",
                                             "--max_iters=100000", "--eval_interval=100000",
                                             "--dist_timeout_s=10")],
        cwd=tmp_path / f"node{rank}", env=script_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    frozen = []
    try:
        for line in nodes[0].stdout:
            if line.startswith("iter 3:"):
                break
        frozen = children(nodes[1].pid)
        assert len(frozen) == 1, frozen  # node 1's one worker
        os.kill(frozen[0], signal.SIGSTOP)
        start = time.monotonic()
        _, err0 = nodes[0].communicate(timeout=120)
        waited = time.monotonic() - start
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        for node in nodes:
            node.kill()
            node.communicate()
    assert nodes[0].returncode != 0
    lines = [line for line in err0.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and 'train.py", line' not in err0, err0[-3000:]
    assert lines[0].startswith("error: rank 0 lost the other processes (") and \
        "dist_timeout_s=10 s" in lines[0], lines[0]
    assert 10 <= waited < 60, waited
