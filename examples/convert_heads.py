"""
The transformer tutorial's "do a few gradient steps from a saved checkpoint": how cheap is it to
convert a trained model to fewer K/V heads (GQA, multi-query), a sliding window, or K/V shared
between layers? Each conversion resumes the CPU preset's model (config/train_don_char.py +
config/cpu_small.py) with one setting changed, which train.py turns into a converted model
(smallgpt/convert_attention.py), and trains it on; the table is val loss before, right after the
conversion and after 25 / 50 / 100 / 200 steps, with the KV cache's bytes per token.

    python data/don_char/prepare.py         # once
    nice python examples/convert_heads.py          # the preset's model (2000 steps), then 7 resumes
    python examples/convert_heads.py --variants=plain,mqa --steps=50     # a quick look

The learning rate is where the preset's schedule ends (min_lr = 1e-4, constant past
lr_decay_iters) and AdamW starts fresh, as it does for any converted model. 'plain' resumes
without a conversion: what 200 more steps give the original. Each run's folder is kept under
out-exercises/convert/ and reused, so running the script again only prints the table.
"""

import argparse
import os

from exercise_tools import REPO, base_model, fresh_copy, kv_bytes_per_token, load, markdown, train
from smallgpt.runlog import read_log

VARIANTS = {  # name: (what the table says, train.py settings)
    "plain": ("none (resumed as it is)", []),
    "gqa2": ("n_kv_head=2, mean", ["--n_kv_head=2"]),
    "mqa": ("n_kv_head=1, mean", ["--n_kv_head=1"]),
    "mqa-first": ("n_kv_head=1, first", ["--n_kv_head=1", "--kv_pool=first"]),
    "window16": ("attn_window=16", ["--attn_window=16"]),
    "share2-first": ("kv_share=2, first", ["--kv_share=2", "--kv_pool=first"]),
    "share2-mean": ("kv_share=2, mean", ["--kv_share=2", "--kv_pool=mean"]),
}
SHOWN = (25, 50, 100, 200)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--variants", default=",".join(VARIANTS), help="names, comma-separated")
parser.add_argument("--steps", type=int, default=200, help="steps after the conversion")
parser.add_argument("--base_iters", type=int, default=2000, help="steps of the original model")
parser.add_argument("--eval_iters", type=int, default=20, help="val batches per evaluation (the preset: 20)")
parser.add_argument("--out_dir", default=os.path.join(REPO, "out-exercises"))
args = parser.parse_args()

base = base_model(os.path.join(args.out_dir, "don-learned"), args.base_iters)
original, start = load(base)
every = min(25, args.steps)  # evaluations every 25 steps, and right after the conversion
if start % every:
    raise SystemExit(f"--base_iters={start} must be a multiple of {every}: train.py evaluates at those")
rows = []
for name in args.variants.split(","):
    label, settings = VARIANTS[name]
    out_dir = os.path.join(args.out_dir, "convert", name)
    last = os.path.join(out_dir, "last.pt")
    if not (os.path.isfile(last) and load(last)[1] == start + args.steps):
        fresh_copy(base, out_dir)
        train(f"--out_dir={out_dir}", "--init_from=resume", "--resume_checkpoint_name=last.pt",
              f"--max_iters={start + args.steps}", f"--eval_interval={every}",
              f"--eval_iters={args.eval_iters}", *settings, log=os.path.join(out_dir, "train.txt"))
    val = {row["iter"] - start: row["val_loss"] for row in read_log(os.path.join(out_dir, "log.csv"))
           if row["kind"] == "eval"}
    if name == "plain":
        rows.insert(0, [f"original (trained {start} steps)", f"{kv_bytes_per_token(original.config):,.0f}",
                        f"{val[0]:.3f}"] + [""] * (1 + len(SHOWN)))
    converted, _ = load(last)
    rows.append([label, f"{kv_bytes_per_token(converted.config):,.0f}", "", f"{val[0]:.3f}"]
                + [f"{val[s]:.3f}" if s in val else "" for s in SHOWN])
    print(rows[-1], flush=True)

table = markdown(["conversion", "KV bytes/token (fp32)", "val loss before", "right after"]
                 + [f"after {s}" for s in SHOWN], rows)
print(table)
with open(os.path.join(args.out_dir, "convert_heads.md"), "w") as f:
    f.write(table + "\n")
