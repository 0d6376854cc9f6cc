"""
Which tokenizer wins? Don Quixote, the CPU preset's model (config/train_don_char.py +
config/cpu_small.py), the same training time for each tokenizer; scored in val bits per byte,
which compare across tokenizers (smallgpt/metrics.py says how bytes are counted).

    python data/don_char/prepare.py        # once: downloads the book to data/don_char/input.txt
    python examples/compare_tokenizers.py          # ~15 min on one core; --text_file=PATH for another copy
    nice -n 10 python examples/compare_tokenizers.py --budget=30 --tokenizers=char,bpe-2048   # quicker

For each tokenizer: prepare the book with it (smallgpt/prepare.py, the same code as
data/don_char/prepare.py --tokenizer=...: a BPE is learned from the train text only, and every
tokenizer's val split is the same text), train the preset's model for `budget` seconds, and
score val bits per byte as it trains and, at the end, on the whole val split. Prints progress
as it goes; writes results.json and the table (markdown) to out_dir, and the plot to `plot`.

The clock is this process's CPU time, on one thread: on a machine others share, wall-clock time
would charge a run for whatever else ran beside it; on an idle machine the two are the same.
The learning rate follows the preset's schedule (warmup for 5% of it, cosine down to min_lr)
stretched over the budget instead of over max_iters, so every run ends its schedule on time.
Evaluations stop the clock.
"""

import json
import math
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # model.py and the smallgpt package of this checkout

# -----------------------------------------------------------------------------
# defaults (--key=value overrides any of these)
text_file = os.path.join(REPO, 'data', 'don_char', 'input.txt')  # the book (UTF-8; Gutenberg's header and footer are dropped)
tokenizers = 'char,bytes,gpt2,bpe-512,bpe-2048,bpe-8192'  # bpe-N: a BPE of N tokens learned from the book
budget = 90.0  # seconds of training (CPU time of this process) per tokenizer
evals = 12  # bits-per-byte measurements during each run (on the first eval_bytes of val)
eval_bytes = 32768  # UTF-8 bytes of val text scored during training (the whole val at the end)
out_dir = 'out-tokenizers'  # datasets (one folder per tokenizer), results.json, table.md
plot = os.path.join(REPO, 'assets', 'tokenizers_don.png')  # '' = no plot
seed = 1337
# -----------------------------------------------------------------------------
from configurator import configure, fail  # noqa: E402

configure(globals(), script='examples/compare_tokenizers.py')

from model import GPT, GPTConfig, set_fast_cpu  # noqa: E402
from smallgpt.dataloader import load_meta, sample_batch  # noqa: E402
from smallgpt.device import autocast_context, pick_dtype  # noqa: E402
from smallgpt.metrics import evaluate_tokens, token_byte_lengths  # noqa: E402
from smallgpt.prepare import prepare_text  # noqa: E402
from smallgpt.tokenizer import Tokenizer  # noqa: E402


def preset():
    """The settings the CPU preset trains with: both config files exec'd in order, as train.py
    reads them (only the keys below are used)."""
    settings = {}
    for name in ('train_don_char.py', 'cpu_small.py'):
        with open(os.path.join(REPO, 'config', name), encoding='utf-8') as f:
            exec(f.read(), settings)
    keys = ('n_layer', 'n_head', 'n_embd', 'block_size', 'batch_size', 'dropout', 'learning_rate',
            'min_lr', 'beta2', 'warmup_iters', 'lr_decay_iters')
    return {k: settings[k] for k in keys}


def prepare_arguments(name):
    """prepare.py's --tokenizer arguments for a name of the `tokenizers` setting."""
    if name == 'gpt2':
        return ['--tokenizer=tiktoken', '--encoding=gpt2']
    if name.startswith('bpe-'):
        return ['--tokenizer=bpe', f'--vocab_size={int(name[4:])}']
    if name in ('char', 'bytes'):
        return [f'--tokenizer={name}']
    fail(f"tokenizers: unknown {name!r}; use char, bytes, gpt2 or bpe-N (e.g. bpe-2048)")


def learning_rate(progress, shape):
    """The preset's schedule on a 0..1 progress axis: linear warmup, cosine to min_lr."""
    warmup = shape['warmup_iters'] / shape['lr_decay_iters']
    if progress < warmup:
        return shape['learning_rate'] * progress / warmup
    ratio = min((progress - warmup) / (1 - warmup), 1.0)
    return shape['min_lr'] + 0.5 * (1 + math.cos(math.pi * ratio)) * (shape['learning_rate'] - shape['min_lr'])


def run(name, folder, shape, dtype):
    """Train one model on one prepared folder for `budget` CPU seconds; its curve and result."""
    meta = load_meta(folder)
    tokenizer = Tokenizer.from_meta(meta)
    vocab_size = meta['vocab_size']
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=shape['n_layer'], n_head=shape['n_head'], n_embd=shape['n_embd'],
                       block_size=shape['block_size'], vocab_size=vocab_size, bias=False,
                       dropout=shape['dropout'])
    model = GPT(config)
    set_fast_cpu(model, True)
    optimizer = model.configure_optimizers(0.1, shape['learning_rate'], (0.9, shape['beta2']), 'cpu')
    ctx = autocast_context('cpu', dtype)
    byte_lengths = token_byte_lengths(tokenizer, vocab_size)
    val = np.fromfile(os.path.join(folder, 'val.bin'), dtype=meta['dtype'])
    # the val tokens that hold the first eval_bytes bytes: the same text for every tokenizer
    head = val[:int(np.searchsorted(np.cumsum(byte_lengths[val]), eval_bytes)) + 1]
    train_path = os.path.join(folder, 'train.bin')
    generator = torch.Generator().manual_seed(seed)
    block_size, batch_size = shape['block_size'], shape['batch_size']

    def bits_per_byte(ids):  # in float32, as eval.py scores on a CPU
        model.eval()
        result = evaluate_tokens(model, ids, block_size, block_size, 8, byte_lengths)
        model.train()
        return result['bits_per_byte']

    curve, trained, iters, wall = [], 0.0, 0, time.time()
    checkpoints = [budget * (k + 1) / evals for k in range(evals)]
    curve.append((0.0, 0, bits_per_byte(head)))
    while trained < budget:
        started = time.process_time()
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(trained / budget, shape)
        x, y = sample_batch(train_path, meta['dtype'], batch_size, block_size, generator)
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iters += 1
        trained += time.process_time() - started
        if checkpoints and trained >= checkpoints[0]:
            checkpoints.pop(0)
            curve.append((trained, iters, bits_per_byte(head)))
            print(f"  {name}: {trained:5.1f}s, {iters:,} iters, loss {loss.item():.3f}, val bits "
                  f"per byte (first {eval_bytes // 1024} KiB) {curve[-1][2]:.3f}", flush=True)
    final = bits_per_byte(val)
    n_params = sum(p.numel() for p in model.parameters())
    wte = model.transformer.wte.weight.numel()
    val_bytes = len(tokenizer.decode_bytes(val))
    return {'name': name, 'vocab_size': vocab_size, 'val_bits_per_byte': final, 'iters': iters,
            'train_seconds': trained, 'wall_seconds': time.time() - wall,
            'tokens_per_second': iters * batch_size * block_size / trained,
            'bytes_per_token': val_bytes / len(val),
            'context_bytes': block_size * val_bytes / len(val),
            'params': n_params, 'embedding_params': wte, 'embedding_share': wte / n_params,
            # the tied wte is also the output layer: 6 V C of the training FLOPs per token
            'lm_head_flop_share': 6 * wte / model.flops_per_token(),
            'curve': curve}


def table(results, cpu):
    lines = [f"Don Quixote, config/train_don_char.py + config/cpu_small.py's model, {budget:.0f} s of "
             f"training each (CPU time, 1 thread, {cpu}); val bits per byte on the whole val split "
             f"(lower is better).", "",
             "| tokenizer | vocab | val bits/byte | iters | tokens/s | bytes/token | context (bytes) "
             "| embedding params (share) | lm_head share of FLOPs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r['val_bits_per_byte']):
        lines.append(f"| {r['name']} | {r['vocab_size']:,} | {r['val_bits_per_byte']:.3f} | "
                     f"{r['iters']:,} | {r['tokens_per_second']:,.0f} | {r['bytes_per_token']:.2f} | "
                     f"{r['context_bytes']:.0f} | {r['embedding_params'] / 1e6:.2f}M "
                     f"({r['embedding_share']:.0%}) | {r['lm_head_flop_share']:.0%} |")
    return "\n".join(lines) + "\n"


def draw(results, cpu, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        seconds, _, bpb = zip(*r['curve'])
        ax.plot(seconds, bpb, marker='.', label=f"{r['name']} ({r['val_bits_per_byte']:.3f})")
    ax.set_xlabel('training time (s, CPU time of one thread)')
    ax.set_ylabel(f'val bits per byte (first {eval_bytes // 1024} KiB)')
    ax.set_ylim(top=min(8.5, ax.get_ylim()[1]))
    ax.set_title(f'Don Quixote, CPU preset model, {budget:.0f} s each\n{cpu}', fontsize=9)
    ax.legend(title='tokenizer (whole val)', fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cpu_name():
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or 'unknown CPU'


def main():
    if not os.path.isfile(text_file):
        fail(f"no book at {text_file}: run python data/don_char/prepare.py (it downloads Don "
             f"Quixote there), or pass --text_file=PATH")
    names = [n.strip() for n in tokenizers.split(',') if n.strip()]
    arguments = {name: prepare_arguments(name) for name in names}  # all names checked first
    torch.set_num_threads(1)
    shape = preset()
    dtype = pick_dtype('auto', 'cpu')  # what train.py picks on this CPU
    cpu = cpu_name()
    os.makedirs(out_dir, exist_ok=True)
    print(f"{cpu}; model {shape['n_layer']} layers x {shape['n_embd']}, block_size "
          f"{shape['block_size']}, batch {shape['batch_size']}, {dtype}; {budget:.0f} s per tokenizer")
    results = []
    for name in names:
        folder = os.path.join(out_dir, name)
        print(f"{name}: preparing {folder}", flush=True)
        prepare_text(out_dir, None, [f'--input={text_file}', f'--dataset={os.path.abspath(folder)}',
                                     *arguments[name]])
        results.append(run(name, folder, shape, dtype))
        print(f"{name}: val bits per byte {results[-1]['val_bits_per_byte']:.4f} after "
              f"{results[-1]['iters']:,} iterations", flush=True)
        with open(os.path.join(out_dir, 'results.json'), 'w', encoding='utf-8') as f:
            json.dump({'cpu': cpu, 'dtype': dtype, 'budget': budget, 'shape': shape,
                       'results': results}, f, indent=1)
    text = table(results, cpu)
    with open(os.path.join(out_dir, 'table.md'), 'w', encoding='utf-8') as f:
        f.write(text)
    print(text)
    if plot:
        draw(results, cpu, plot)
        print(f"wrote {plot}")


if __name__ == '__main__':
    main()
