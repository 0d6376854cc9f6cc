"""
Faults and untrusted inputs, tried the way they happen: two runs on one folder, a run killed
with kill -9, a new run in a folder that holds an old one, a Hugging Face folder that asks to run
its own code, a file cut short. Organised by the principle each part checks (issue #26):

  1. an out_dir belongs to one run at a time         (smallgpt/lock.py)
  2. nothing already saved is lost                    (smallgpt/runlog.py: log.csv kept aside)
  3. untrusted inputs are never executed              (smallgpt/hf: trust_remote_code=False)
  4. faults and mistakes are one line                 (workbench booleans, a cut safetensors)

    python -m pytest tests/test_faults.py -q

CPU only, offline, under a minute. The lock tests start small Python processes that import only
smallgpt.lock, so they take a fraction of a second each.
"""

import ast
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, error_lines, run_script, run_train, script_env

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
