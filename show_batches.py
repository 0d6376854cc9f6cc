"""
Print the rows of a few consecutive training batches, decoded, to see how data_order feeds the
model (seed 002's gen_sample_data.py). With data_order='sequential' row b of each batch starts
exactly where row b of the batch before ended, which is what TransformerXL's memory relies on.

    python show_batches.py --dataset=don_char --batch_size=4 --block_size=32 --steps=3
    python show_batches.py --dataset=don_char --data_order=random     # unrelated windows

It reads the same windows train.py would at steps start_step, start_step + 1, ... (one process,
gradient_accumulation_steps = 1; the random order with train.py's default seed).
`python show_batches.py --help` lists every setting below.
"""

import os

import torch

# -----------------------------------------------------------------------------
# defaults (a config file or --key=value overrides any of these)
dataset = 'don_char'  # folder under data/ holding train.bin, val.bin and meta.json
split = 'train'  # 'train' or 'val'
data_order = 'sequential'  # 'sequential' or 'random', as in train.py
batch_size = 4  # rows per batch
block_size = 32  # tokens per row
steps = 3  # consecutive batches to print
start_step = 0  # the first training step shown
seed = 1337  # train.py's seed (data_order='random' only)
# -----------------------------------------------------------------------------
from configurator import configure  # noqa: E402

configure(globals(), echo=False)

from smallgpt.errors import fail  # noqa: E402
from smallgpt.tokenizer import Tokenizer  # noqa: E402
from smallgpt.dataloader import count_tokens, load_meta, sample_batch, sequential_starts  # noqa: E402

data_dir = dataset if os.path.isdir(dataset) else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', dataset)
bin_path = os.path.join(data_dir, f'{split}.bin')
if not os.path.isfile(bin_path):
    fail(f"no {split}.bin in {data_dir}; prepare it first, e.g. python data/{dataset}/prepare.py")
if data_order not in ('sequential', 'random'):
    fail(f"data_order={data_order!r}: use 'sequential' or 'random'")
meta = load_meta(data_dir)
if meta and 'lines' in meta:
    fail(f"{dataset!r} is a line dataset (one sample per line); show_batches shows running text")
tokenizer = Tokenizer.from_meta(meta)
dtype = meta['dtype'] if meta else 'uint16'
n_tokens = count_tokens(bin_path, dtype)
generator = torch.Generator().manual_seed(seed)
for step in range(start_step + steps):
    if data_order == 'sequential':
        try:
            starts, wrapped = sequential_starts(n_tokens, batch_size, block_size, step)
        except ValueError as e:
            fail(e)
    else:  # train.py's draw: one per step from its own generator
        starts = torch.randint(n_tokens - block_size, (batch_size,), generator=generator).tolist()
        wrapped = False
    if step < start_step:
        continue
    x, _ = sample_batch(bin_path, dtype, batch_size, block_size, offsets=starts)
    print(f"step {step}" + (" (every row starts its stretch over)" if wrapped and step else ""))
    for row, (start, ids) in enumerate(zip(starts, x)):
        print(f"  row {row} @ {start:>9,}: {tokenizer.decode(ids)!r}")
