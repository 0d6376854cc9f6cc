"""
The one way a script stops on a user's mistake: library code raises UserError with a one-line
message that names the fix; the script catches it and calls fail(), which prints `error: ...`
once (rank 0 under torchrun) and exits non-zero on every rank, so torchrun stops the whole job.

    try:
        meta = load_meta(data_dir)
    except UserError as e:
        fail(e)

Internal invariants stay `assert`s: a bug deserves its traceback, a typo does not.
"""

import os
import sys


class UserError(ValueError):
    """A mistake the user can fix (a setting, a missing file); the message is one line saying
    what to do. A ValueError, so code that catches ValueError keeps working."""


def is_main_process():
    """False in torchrun's ranks 1, 2, ...: they keep quiet, so a message is printed once.
    torchrun sets RANK before the script starts, so this works before the process group is up."""
    return os.environ.get("RANK", "0") == "0"


def fail(message, code=1):
    """Print `error: message` on stderr (from rank 0 only) and exit with `code` on every rank."""
    if is_main_process():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def quiet_ctrl_c(what_remains=""):
    """Ctrl+C in a script that has nothing to save (sampling, evaluating, exporting): one line
    on stderr instead of a traceback. The process still ends as an interrupt (exit status 130),
    so a shell loop or a Makefile stops. `what_remains`: said after it (e.g. a half-written
    folder)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted" + (f": {what_remains}" if what_remains else ""), file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = hook
