"""
One run per out_dir: a lock that a training run holds for its whole life, so a second run
started on the same folder stops at once with one line naming the first.

    from smallgpt.lock import RunLockError, acquire_run_lock, remove_stale_temp_files_under_lock
    try:
        lock = acquire_run_lock(out_dir)   # out_dir/run.lock, held until release() or exit
    except RunLockError as e:
        fail(e)   # "out_dir out is in use by the run started ... on HOST (pid N): COMMAND; ..."
    remove_stale_temp_files_under_lock(lock)   # temp saves of dead runs
    ...
    lock.release()   # or just exit: the kernel lets go of it

How: the lock is fcntl.flock on out_dir/run.lock, which stays open for the run's life. The kernel
drops a flock when the process that holds it dies, kill -9 included, so a lock file left behind
by a dead run blocks nothing, and there is no process id to probe: a process id means nothing in
another container, while a flock taken in one container is seen in every other container that
mounts the same local filesystem (one kernel, one inode). The holder writes who it is (pid,
host, start time, command line) into the file, for the message the second run prints.

Across machines it is as good as the filesystem's locks. On NFS, Linux turns flock into an NFS
byte-range lock, so clients of one server exclude each other; a client that crashes keeps its
lock until the server notices (NFSv4: its lease runs out, typically 90 s), and a mount with
`nolock` makes locks local to each client, so two machines could both "hold" it. A filesystem
with no locks at all gets a warning and the run goes on unprotected.

What it is not: a queue. A second run doesn't wait; it says who is there and stops.
"""

import datetime
import errno
import fcntl
import os
import shlex
import socket
import sys
import time

from smallgpt.errors import UserError

LOCK_NAME = "run.lock"


class RunLockError(UserError):
    """out_dir is held by another run; the message is one line naming it."""


class RunLock:
    """A held run lock (or, where the filesystem has no locks, a note that there is none)."""

    def __init__(self, out_dir, fd):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.fd = fd  # None: not locked (no locks on this filesystem), or released

    @property
    def held(self):
        return self.fd is not None

    def release(self):
        """Let go of out_dir; safe to call twice. The holder info is cleared first, so a file
        that still names a run is one whose run died without releasing."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # e.g. a read-only remount: closing below still releases the lock
        os.close(self.fd)  # closing the last descriptor of the open file drops the flock
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def holder_info(command=None):
    """Who we are, as the lines written into run.lock."""
    started = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    command = command or shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return {"pid": str(os.getpid()), "host": socket.gethostname(), "started": started,
            "command": command.replace("\n", " ")}


def read_holder(path):
    """The 'key value' lines of a lock file as a dict (empty when it has none yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    holder = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            holder[key] = value
    return holder


def in_use_message(out_dir, holder):
    if not holder.get("pid"):  # the holder took the lock a moment ago and hasn't written yet
        who = "another run (it is starting; its details are not written yet)"
    else:
        who = (f"the run started {holder.get('started', '?')} on {holder.get('host', '?')} "
               f"(pid {holder['pid']}): {holder.get('command', '?')}")
    return f"out_dir {out_dir} is in use by {who}; wait for it or pass another --out_dir"


def acquire_run_lock(out_dir, command=None, wait_for_details=1.0):
    """Lock out_dir for this process, or raise RunLockError with one line naming the run that
    holds it. out_dir must exist. `command` is what the message of a second run shows (default:
    this process's command line). Returns a RunLock; keep it (and so its open file) until the
    run is over."""
    path = os.path.join(out_dir, LOCK_NAME)
    try:
        # O_CLOEXEC (Python's default): a program this run starts with exec doesn't inherit it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only disk, no permission, a folder named run.lock ...
        raise RunLockError(f"can't write {path} ({e.strerror}); a run writes its checkpoints and "
                           f"log into out_dir, so pass a writable --out_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            print(f"warning: can't lock {path} ({e.strerror}): this filesystem has no file locks, "
                  f"so nothing stops a second run from writing into {out_dir} at the same time",
                  file=sys.stderr)
            return RunLock(out_dir, None)
        holder = read_holder(path)
        deadline = time.monotonic() + wait_for_details
        while not holder.get("pid") and time.monotonic() < deadline:
            time.sleep(0.05)  # the holder writes its details right after it gets the lock
            holder = read_holder(path)
        raise RunLockError(in_use_message(out_dir, holder)) from None
    text = "".join(f"{key} {value}\n" for key, value in holder_info(command).items())
    os.ftruncate(fd, 0)  # a dead run's details may still be in the file
    os.pwrite(fd, text.encode("utf-8"), 0)
    return RunLock(out_dir, fd)


def is_checkpoint_temp_file(name):
    """'<name>.pt.tmp.<pid>': what smallgpt.checkpoint.save_checkpoint writes before its rename."""
    stem, _, pid = name.rpartition(".tmp.")
    return stem.endswith(".pt") and pid.isdigit()


def remove_stale_temp_files_under_lock(lock):
    """Delete the checkpoint temp files in the locked out_dir; return their names.

    Only a run that holds out_dir's lock writes into it, so while we hold it every temp file
    there was left by a run killed in the middle of a save, whatever its pid: no need to ask
    whether that pid is alive (in another container the answer would be about someone else).
    Without the lock (a filesystem with no locks) nothing is removed: the writer may be alive."""
    if not lock.held:
        return []
    removed = []
    for name in sorted(os.listdir(lock.out_dir)):
        if is_checkpoint_temp_file(name) and not name.endswith(f".tmp.{os.getpid()}"):
            os.remove(os.path.join(lock.out_dir, name))
            removed.append(name)
    return removed
