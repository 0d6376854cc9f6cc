"""
The transformer tutorial's question "how many iterations are needed to make the model use a
larger block_size?", measured: the CPU preset's model (config/train_don_char.py +
config/cpu_small.py, block_size 64) with learned positions and with rotary ones, resumed at
block_size x4 (256), and the val loss at the positions past the old limit (64..255) after
0, 25, 50, 100, 200 and 400 steps.

    python data/don_char/prepare.py            # once
    nice python examples/longer_context.py     # two preset models (2000 steps each), then 2 x 400 steps
    python examples/longer_context.py --stages=25,50 --base_iters=250   # a quick look

The resumed runs keep the preset's 768 tokens per step (batch_size 12 -> 3 at 4x the block),
so a step costs what it did; the learning rate is where the preset's schedule ends (min_lr
1e-4), or a constant --learning_rate (e.g. the preset's peak, 1e-3). A learned table grows
192 new rows (the mean learned row plus noise, train.py's fit_block_size); rotary positions
need nothing. Each stage resumes the last one's last.pt
(train.py resumes exactly: the same batches as one run). Loss by position: windows of 256 val
tokens, each read from its start, evenly spread over the val split (exercise_tools.py).
"""

import argparse
import os

import torch

from exercise_tools import (REPO, base_model, fresh_copy, load, loss_by_position, markdown, train,
                            val_tokens)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--stages", default="25,50,100,200,400", help="steps after the resume")
parser.add_argument("--factor", type=int, default=4, help="new block_size / old")
parser.add_argument("--base_iters", type=int, default=2000, help="steps of the original models")
parser.add_argument("--pos_embs", default="learned,rope", help="the models, comma-separated")
parser.add_argument("--learning_rate", type=float, default=0.0,
                    help="a constant learning rate for the resumed runs (0 = the schedule's min_lr)")
parser.add_argument("--out_dir", default=os.path.join(REPO, "out-exercises"))
args = parser.parse_args()
lr_settings = [f"--learning_rate={args.learning_rate}", "--decay_lr=False"] if args.learning_rate else []
suffix = f"-lr{args.learning_rate:g}" if args.learning_rate else ""

tokens = val_tokens()
stages = [int(s) for s in args.stages.split(",")]
rows = []
for pos_emb in args.pos_embs.split(","):
    base = base_model(os.path.join(args.out_dir, f"don-{pos_emb}"), args.base_iters, pos_emb)
    model, start = load(base)
    old = model.config.block_size
    new = old * args.factor
    batch_size = max(1, 12 // args.factor)  # the preset's 12 x 64 tokens per step
    # step 0: what train.py starts from (the same new wpe rows: its seed, 1337)
    model.extend_block_size(new, torch.Generator().manual_seed(1337))
    losses = {0: loss_by_position(model, tokens, new)}
    out_dir = os.path.join(args.out_dir, "longer", pos_emb + suffix)
    done = 0
    if os.path.isfile(os.path.join(out_dir, "last.pt")):
        done = load(os.path.join(out_dir, "last.pt"))[1] - start
    if done not in stages:
        fresh_copy(base, out_dir)
        done = 0
    for steps in stages:
        if steps > done:
            train(f"--out_dir={out_dir}", "--init_from=resume", "--resume_checkpoint_name=last.pt",
                  f"--block_size={new}", f"--batch_size={batch_size}", f"--max_iters={start + steps}",
                  "--eval_interval=100000", "--eval_iters=2", *lr_settings,
                  log=os.path.join(out_dir, f"train{steps}.txt"))
            torch.save(load(os.path.join(out_dir, "last.pt"))[0].state_dict(),
                       os.path.join(out_dir, f"weights{steps}.pt"))  # the step's model, for a rerun
            done = steps
        model, _ = load(os.path.join(out_dir, "last.pt"))
        model.load_state_dict(torch.load(os.path.join(out_dir, f"weights{steps}.pt"), weights_only=True))
        losses[steps] = loss_by_position(model, tokens, new)
        print(pos_emb, steps, f"{losses[steps][old:].mean():.3f}", flush=True)
    for steps, by_position in losses.items():
        ranges = (slice(0, old), slice(old, 2 * old), slice(old, new), slice(new - old, new))
        rows.append([pos_emb, steps] + [f"{by_position[r].mean():.3f}" for r in ranges])

table = markdown(["position embedding", "steps at 4x block", f"val loss, pos < {old}",
                  f"{old} .. {2 * old - 1}", f"{old} .. {new - 1}", f"{new - old} .. {new - 1}"], rows)
print(table)
with open(os.path.join(args.out_dir, f"longer_context{suffix}.md"), "w") as f:
    f.write(table + "\n")
