"""
"A few good outputs, then noise": the loss at each position of sequences 4 x block_size long,
for one rotary model read four ways, in one figure (assets/loss_by_position_don.png).

    python data/don_char/prepare.py
    python train.py config/train_don_char.py config/cpu_small.py --pos_emb=rope \
        --out_dir=out-don-small-char-rope --max_iters=1500 --lr_decay_iters=1500
    python examples/loss_by_position.py --out_dir=out-don-small-char-rope

The four ways are sample.py's policies (smallgpt/metrics.py loss_by_position feeds the tokens as
the sampler does): every earlier token (--context_window=-1: the model reads distances it never
trained on), a band of block_size at every layer (sample.py's default for rope/none), the band
plus the first tokens kept as attention sinks (--kv_sink), and a band of twice block_size. For
one policy on any model: python eval.py --by_position=True (docs/evaluation.md).
"""

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # model.py and the smallgpt package of this checkout

# -----------------------------------------------------------------------------
# defaults (--key=value overrides any of these)
out_dir = 'out-don-small-char-rope'  # a rope (or none) model's run folder
checkpoint_name = 'ckpt.pt'
dataset = ''  # '' = the one it trained on
split = 'val'
lengths = 4  # sequence length in block_sizes
sequences = 256  # sequences evenly spread over the split
smooth = 8  # each point of the plot: the mean of this many positions (the CSV has every one)
sinks = 4  # tokens kept as attention sinks in the third curve
plot = os.path.join(REPO, 'assets', 'loss_by_position_don.png')  # its CSV goes beside it
# -----------------------------------------------------------------------------
from configurator import configure, fail  # noqa: E402

configure(globals(), script='examples/loss_by_position.py')

from model import GPT  # noqa: E402
from smallgpt.checkpoint import load_model  # noqa: E402
from smallgpt.metrics import loss_by_position, write_by_position  # noqa: E402

try:
    model, meta, config = load_model(GPT, 'resume', out_dir, checkpoint_name)
except ValueError as e:
    fail(e)
block = model.config.block_size
if model.config.pos_emb == 'learned':
    fail(f"{out_dir} has learned positions: it can't read past block_size={block} at all; "
         f"train one with --pos_emb=rope")
folder = dataset or config.get('dataset', '')
data_dir = folder if os.path.isdir(folder) else os.path.join(REPO, 'data', folder)
ids = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.dtype(meta['dtype']), mode='r')
policies = {
    'every earlier token (context_window=-1)': dict(context_window=-1),
    f'band of block_size={block} (sample.py default)': dict(context_window=0),
    f'band + {sinks} sink tokens (kv_sink={sinks})': dict(context_window=0, kv_sink=sinks),
    f'band of {2 * block} (context_window={2 * block})': dict(context_window=2 * block),
}
curves = {}
for label, policy in policies.items():
    curves[label] = loss_by_position(model, ids, lengths * block, sequences, batch_size=64,
                                     **policy)
    inside, past = curves[label][:block].mean(), curves[label][block:].mean()
    print(f"{label:48s} loss {inside:.3f} at positions < {block}, {past:.3f} past them")
prefix = os.path.splitext(plot)[0]
write_by_position(curves, block, prefix, title=f"{os.path.basename(out_dir)}: loss by position "
                                                f"({sequences} sequences of {split})", smooth=smooth)
print(f"wrote {prefix}.png and {prefix}.csv")
