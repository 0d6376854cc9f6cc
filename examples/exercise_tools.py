"""
What the transformer tutorial's exercise scripts share (examples/convert_heads.py,
examples/longer_context.py, examples/linear_vs_softmax.py): running train.py as a student
would, loading a checkpoint, and the loss at each position of long val windows.

Not a script: the three scripts import it. Every training run goes through train.py with the
CPU preset (config/train_don_char.py + config/cpu_small.py), so the numbers are the ones a
student gets from the same command lines; docs/tutorial_exercises.md holds the tables.
"""

import os
import shutil
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from model import GPT  # noqa: E402
from smallgpt import metrics  # noqa: E402
from smallgpt.checkpoint import load_checkpoint  # noqa: E402
from smallgpt.kvcache import KVCache  # noqa: E402

PRESET = ["config/train_don_char.py", "config/cpu_small.py"]


def train(*args, log=None):
    """python train.py PRESET *args from the repo root; stops the script if the run fails."""
    cmd = [sys.executable, "train.py", *PRESET, *map(str, args)]
    print("$ " + " ".join(cmd[1:]), flush=True)
    with open(log or os.devnull, "w") as out:
        result = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"train.py failed (exit {result.returncode}); its output: {log}")


def base_model(out_dir, max_iters, pos_emb="learned"):
    """The preset's model trained once into out_dir (reused when out_dir/last.pt is there)."""
    if not os.path.isfile(os.path.join(out_dir, "last.pt")):
        os.makedirs(out_dir, exist_ok=True)
        train(f"--out_dir={out_dir}", f"--pos_emb={pos_emb}", f"--max_iters={max_iters}",
              f"--lr_decay_iters={max_iters}", log=os.path.join(out_dir, "train.txt"))
    return os.path.join(out_dir, "last.pt")


def fresh_copy(checkpoint, out_dir):
    """out_dir emptied, holding only `checkpoint` as last.pt: a resume starts from it."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    shutil.copy(checkpoint, os.path.join(out_dir, "last.pt"))


def load(path):
    ckpt = load_checkpoint(path, "cpu")
    return GPT.from_checkpoint(ckpt, dropout=0.0, path=path).eval(), ckpt["iter_num"]


def val_tokens(dataset="don_char"):
    meta_dtype = np.uint16  # the char datasets' token type (meta.json 'dtype')
    return np.memmap(os.path.join(REPO, "data", dataset, "val.bin"), dtype=meta_dtype, mode="r")


def loss_by_position(model, tokens, length, n_windows=96, batch_size=8):
    """The mean cross-entropy (nats) at each position 0..length-1 of n_windows windows of
    `tokens`, evenly spread over them, each read from its start (no earlier context): (length,).
    eval.py --by_position's function with a window of length + 1 tokens, every earlier token
    in view; the models here have a block_size that holds the window (extend_block_size)."""
    return metrics.loss_by_position(model, tokens, length + 1, n_windows, batch_size,
                                    context_window=-1)


def kv_bytes_per_token(config, itemsize=4):
    """Bytes of K and V a decoder keeps per token of context, at block_size tokens (a window
    caps what its layers keep; shared layers keep one set): fp32 by default."""
    slots = sum(KVCache.for_model(config, 1, config.block_size).capacities)
    head_dim = config.n_embd // config.n_head
    return slots * 2 * config.kv_heads * head_dim * itemsize / config.block_size


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
