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

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

from smallgpt.lock import (LOCK_NAME, RunLockError, acquire_run_lock, read_holder,  # noqa: E402
                           remove_stale_temp_files_under_lock)

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
