"""
Golden runs: the same three training runs before and after a refactor must give the same numbers.

    python tests/golden_run.py record before.json              # on the old code (e.g. a worktree)
    python tests/golden_run.py record after.json               # on the new code
    python tests/golden_run.py compare before.json after.json  # exit 1 and the differences, or "same"

`record` copies the checkout (tracked files only, `git ls-files`) to a temporary folder and runs
there, as a user would, in float32 on one CPU thread so the numbers are repeatable bit for bit:
  1. shakespeare_char, the CPU command (4 layers x 128, block 64, batch 12), 200 iterations;
  2. the same data with rope + grouped-query attention (2 KV heads) + a 16-token window on every
     other layer, 100 iterations;
  3. the addition line dataset (data/add) with loss_on='answer' and eval_accuracy, 100 iterations.
It keeps each run's log.csv (timing columns dropped), a sha256 of every tensor in ckpt.pt and
last.pt (model, optimizer, torch's RNG state), the checkpoint's iter_num / best_val_loss / model_args, and
a greedy sample from sample.py. It needs tinyshakespeare.txt (NANOGPT_TEST_DATA or ../shared/data).
"""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TIMING = ("ms_per_iter", "tokens_per_s", "mfu")
FP32_CPU = ["--device=cpu", "--compile=False", "--dtype=float32", "--peak_flops=1e12"]
CHAR_CPU = ["config/train_shakespeare_char.py", *FP32_CPU, "--eval_iters=20", "--log_interval=1",
            "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
            "--dropout=0.0", "--eval_interval=100"]
RUNS = {
    "char": (["data/shakespeare_char/prepare.py", "--input={shakespeare}"],
             [*CHAR_CPU, "--max_iters=200", "--lr_decay_iters=200", "--out_dir=out-golden-char"],
             ["--start=ROMEO:"]),
    "rope_gqa_window": (None,
                        [*CHAR_CPU, "--max_iters=100", "--lr_decay_iters=100", "--warmup_iters=10",
                         "--pos_emb=rope",
                         "--n_kv_head=2", "--attn_window=16", "--window_pattern=SL",
                         "--eval_interval=50", "--out_dir=out-golden-rope"],
                        ["--start=ROMEO:"]),
    "add_lines": (["data/add/prepare.py", "--digits=2"],
                  ["config/train_add.py", *FP32_CPU, "--max_iters=100", "--lr_decay_iters=100",
                   "--warmup_iters=10", "--eval_interval=50", "--eval_accuracy=50",
                   "--log_interval=10", "--out_dir=out-golden-add"],
                  ["--start=12+34="]),
}


def shakespeare_path():
    folder = os.environ.get("NANOGPT_TEST_DATA") or str(REPO.parent / "shared" / "data")
    path = Path(folder) / "tinyshakespeare.txt"
    if not path.is_file():
        sys.exit(f"error: {path} not found; set NANOGPT_TEST_DATA to a folder with tinyshakespeare.txt")
    return str(path)


def copy_checkout(dest):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def tensor_digests(obj, prefix=""):
    """{path: sha256 of the bytes} for every tensor inside nested dicts/lists; other leaves as repr."""
    out = {}
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            out.update(tensor_digests(obj[key], f"{prefix}/{key}"))
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            out.update(tensor_digests(item, f"{prefix}/{i}"))
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        out[prefix] = f"{t.dtype}{list(obj.shape)}:" + hashlib.sha256(t.view(torch.uint8).numpy()
                                                                    .tobytes()).hexdigest()[:16]
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = repr(obj)
    return out


def record_run(name, cwd, shakespeare):
    prepare, train_args, sample_args = RUNS[name]
    if prepare:
        run([a.format(shakespeare=shakespeare) for a in prepare], cwd)
    run(["train.py", *train_args], cwd)
    out_dir = next(a.split("=", 1)[1] for a in train_args if a.startswith("--out_dir="))
    with open(cwd / out_dir / "log.csv") as f:
        rows = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]
    result = {"log": rows}
    for ckpt_name in ("ckpt.pt", "last.pt"):
        ckpt = torch.load(cwd / out_dir / ckpt_name, map_location="cpu", weights_only=True)
        result[ckpt_name] = {
            # the RNG entries of Python's and numpy's generators are left out: train.py never
            # seeds them (nothing it computes draws from them), so they differ from run to run
            "tensors": tensor_digests({"model": ckpt["model"], "optimizer": ckpt["optimizer"],
                                       "rng": [{k: v for k, v in r.items() if k not in ("python", "numpy")}
                                               for r in ckpt.get("rng", [])]}),
            "iter_num": ckpt.get("iter_num"), "best_val_loss": float(ckpt.get("best_val_loss")),
            "model_args": {k: v for k, v in ckpt.get("model_args", {}).items()}}
    result["sample"] = run(["sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1",
                            "--max_new_tokens=60", "--top_k=1", "--seed=1", *sample_args], cwd)
    return result


def record(path):
    shakespeare = shakespeare_path()
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        cwd = Path(tmp)
        copy_checkout(cwd)
        results = {}
        for name in RUNS:
            print(f"golden run {name} ...", flush=True)
            results[name] = record_run(name, cwd, shakespeare)
    Path(path).write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
    print(f"wrote {path}")


def compare(a_path, b_path):
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    problems = []

    def walk(x, y, where):
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                if key not in x or key not in y:
                    problems.append(f"{where}/{key}: only in {'after' if key in y else 'before'}")
                else:
                    walk(x[key], y[key], f"{where}/{key}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (xi, yi) in enumerate(zip(x, y)):
                walk(xi, yi, f"{where}/{i}")
        elif x != y:
            problems.append(f"{where}: {str(x)[:80]!r} != {str(y)[:80]!r}")

    walk(a, b, "")
    for line in problems[:40]:
        print(line)
    if problems:
        print(f"{len(problems)} differences")
        return 1
    print("same: log.csv values, checkpoint tensors and greedy samples are equal")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
