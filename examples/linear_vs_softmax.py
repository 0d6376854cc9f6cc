"""
The transformer tutorial's question: linear attention against softmax at small blocks.
For block_size 16, 32, 64 and 128, train the CPU preset's model (config/train_don_char.py +
config/cpu_small.py) with softmax and with linear attention on the same tokens (batch_size
x block_size = the preset's 768 tokens per step, the same number of steps), then score val
loss inside the block (positions < block_size) and past it (block_size .. 4 x block_size - 1)
on windows four blocks long.

    python data/don_char/prepare.py           # once
    nice python examples/linear_vs_softmax.py                   # 8 runs of 300 steps
    python examples/linear_vs_softmax.py --max_iters=100 --blocks=16,32   # a quick look

Both use pos_emb='none' (no position signal but the causal mask): linear attention takes no
rotary positions here, and a learned table has no rows past block_size, so this is the one
setting where both models can read past their training length. Writes the table beside
out_dir (out-exercises/linear_vs_softmax.md); docs/tutorial_exercises.md discusses it.
"""

import argparse
import os

from exercise_tools import REPO, load, loss_by_position, markdown, train, val_tokens

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--blocks", default="16,32,64,128", help="block sizes, comma-separated")
parser.add_argument("--max_iters", type=int, default=300, help="steps per run (the preset: 2000)")
parser.add_argument("--tokens_per_iter", type=int, default=768, help="batch_size x block_size")
parser.add_argument("--out_dir", default=os.path.join(REPO, "out-exercises", "linear_vs_softmax"))
args = parser.parse_args()

tokens = val_tokens()
rows = []
for block in [int(b) for b in args.blocks.split(",")]:
    for attention in ("softmax", "linear"):
        out_dir = os.path.join(args.out_dir, f"{attention}-{block}")
        if not os.path.isfile(os.path.join(out_dir, "last.pt")):
            os.makedirs(out_dir, exist_ok=True)
            n = args.max_iters
            train(f"--out_dir={out_dir}", f"--attention={attention}", "--pos_emb=none",
                  f"--block_size={block}", f"--batch_size={args.tokens_per_iter // block}",
                  f"--max_iters={n}", f"--lr_decay_iters={n}", f"--warmup_iters={max(1, n // 20)}",
                  f"--eval_interval={n}", log=os.path.join(out_dir, "train.txt"))
        model, _ = load(os.path.join(out_dir, "last.pt"))
        model.extend_block_size(4 * block)  # no position table: this only lifts the length check
        by_position = loss_by_position(model, tokens, 4 * block)
        inside, past = by_position[:block].mean().item(), by_position[block:].mean().item()
        rows.append([block, attention, f"{inside:.3f}", f"{past:.3f}", f"{past - inside:+.3f}"])
        print(rows[-1], flush=True)

table = markdown(["block_size", "attention", "val loss, positions < block",
                  "val loss, block .. 4 block", "past - inside"], rows)
print(table)
with open(args.out_dir.rstrip("/") + ".md", "w") as f:  # out-exercises/linear_vs_softmax.md
    f.write(table + "\n")
