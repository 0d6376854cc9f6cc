"""
Evaluate a model on a prepared dataset's split or on any text file: loss, perplexity, bits per
byte, token count, and accuracy on line datasets.

    python eval.py --out_dir=out-add --dataset=add --split=test          # a checkpoint; accuracy too
    python eval.py --out_dir=out-don-small-char --split=val              # the dataset it trained on
    python eval.py --out_dir=out-don-small-char --text=prompt/don.txt --json=True
    python eval.py --init_from=gpt2 --dataset=shakespeare --stride=512 --batch_size=1
    python eval.py --out_dir=out-don-small-char-rope --by_position=True --context_window=-1   # past block_size
`python eval.py --help` lists every setting below.

A plain dataset (or --text) is read in order, whole, in windows of block_size tokens that start
every `stride` tokens; each token is scored once (evaluation.sliding_windows). A line dataset
is read one line per window, as train.py trains on it. How bytes are counted for bits per byte:
smallgpt/metrics.py's docstring. --json=True prints one JSON object (loss, perplexity, bits_per_byte,
tokens, bytes, and accuracy for line datasets) and nothing else on stdout.
"""

import json as json_module  # `json` is a setting below
import os
import sys

import numpy as np

# -----------------------------------------------------------------------------
# defaults (a config file or --key=value overrides any of these)
init_from = 'resume'  # 'resume' (a checkpoint in out_dir), gpt2*, or a local HF GPT-2/Starcoder2 folder
out_dir = 'out'  # where train.py wrote its checkpoints
checkpoint_name = 'ckpt.pt'  # ckpt.pt (best val loss) or last.pt (latest)
dataset = ''  # a prepared dataset: name under data/ or a folder ('' = the one the checkpoint trained on)
split = 'val'  # 'val', 'test' (line datasets) or 'train'
text = ''  # a UTF-8 text file to evaluate instead, tokenised with the model's vocabulary
block_size = 0  # tokens per window (0 = the model's block_size)
stride = 0  # tokens between window starts (0 = block_size); smaller gives each token more context
batch_size = 8  # windows (or lines) per forward pass; lower it for GPT-2: its logits are 50257 wide
max_windows = 0  # stop after this many windows (0 = the whole split)
loss_on = ''  # line datasets: 'all' or 'answer' ('' = as the checkpoint trained, else 'all')
answer_separator = ''  # line datasets ('' = the checkpoint's, else the dataset's)
accuracy = True  # line datasets with an answer separator: exact-match accuracy of greedy answers
json = False  # print one JSON object instead of the text report
device = 'auto'  # auto (cuda > mps > cpu), cpu, cuda, mps
dtype = 'auto'  # auto (CPU: float32; GPU: bf16/fp16), float32, bfloat16, float16
weights_dtype = 'float32'  # float32, bfloat16 or int8: evaluate the weights sample.py would decode with
# loss by position: how the model reads long sequences, past block_size (docs/evaluation.md)
by_position = False  # write the mean loss at each position of long sequences, as CSV and PNG
by_position_length = 0  # tokens per sequence (0 = 4 x block_size)
by_position_sequences = 16  # sequences, evenly spread over the text
by_position_out = ''  # path prefix of the .csv and .png ('' = out_dir/loss_by_position)
context_window = 0  # by_position: context each prediction sees, as sample.py (0 = block_size; -1 = all, rope/none)
kv_sink = 0  # by_position: the first N tokens stay in the cache past the context (rope/none)
kv_budget = 0  # by_position: tokens each layer's cache keeps, the most attended plus a recent window (0 = all)
xl_memory = 0  # by_position: run segments of block_size with a TransformerXL memory of N tokens instead
# -----------------------------------------------------------------------------
from configurator import configure  # noqa: E402

configure(globals(), echo=False)  # stdout is the result (one JSON object with --json=True)

from model import GPT  # noqa: E402
from smallgpt.checkpoint import load_model  # noqa: E402
from smallgpt.quantize import quantize_weights  # noqa: E402
from smallgpt.metrics import (evaluate_lines, evaluate_tokens, line_accuracy, loss_by_position,  # noqa: E402
                              token_byte_lengths, write_by_position)
from smallgpt.lines import LineDataset, is_line_dataset  # noqa: E402
from smallgpt.device import autocast_context, device_type_of, pick_device, pick_dtype  # noqa: E402
from smallgpt.errors import fail, quiet_ctrl_c  # noqa: E402
from smallgpt.tokenizer import Tokenizer, check_vocab_fits, vocabulary_difference  # noqa: E402
from smallgpt.dataloader import count_tokens, load_meta  # noqa: E402
from smallgpt.prepare import read_utf8  # noqa: E402
from smallgpt.tutorial import prepare_text_folder  # noqa: E402

quiet_ctrl_c()  # a stopped evaluation has nothing to save: no traceback

REPO = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- settings
if split not in ('train', 'val', 'test'):
    fail(f"split={split!r}: use 'train', 'val' or 'test'")
if text and dataset:
    fail("give --text=FILE or --dataset=NAME, not both")
for name in ('block_size', 'stride', 'max_windows', 'by_position_length', 'kv_sink', 'kv_budget',
             'xl_memory'):
    if globals()[name] < 0:
        fail(f"{name}={globals()[name]} can't be negative (0 = the default)")
if batch_size < 1:
    fail(f"batch_size={batch_size} must be at least 1")
if loss_on not in ('', 'all', 'answer'):
    fail(f"loss_on={loss_on!r}: use 'all' or 'answer'")
if text and not os.path.isfile(text):
    fail(f"--text file not found: {text}")

# ----------------------------------------------------------------------------- model
try:
    device = pick_device(device)
    device_type = device_type_of(device)
    dtype = pick_dtype(dtype, device_type, quiet=True, training=False)
    model, meta, trained = load_model(GPT, init_from, out_dir, checkpoint_name, device)
    quantize_weights(model, weights_dtype)
    tokenizer = Tokenizer.from_meta(meta)
    check_vocab_fits(tokenizer, model.config.vocab_size)
except (OSError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
    fail(e)
trained = trained or {}
ctx = autocast_context(device_type, dtype)
block_size = block_size or model.config.block_size
if block_size > model.config.block_size:
    if model.config.pos_emb == 'learned':
        fail(f"block_size={block_size} is more than the model's {model.config.block_size} positions")
    print(f"note: windows of {block_size} tokens, longer than the {model.config.block_size} the "
          f"model trained on: it reads distances it never saw", file=sys.stderr)
if by_position_sequences < 1:
    fail(f"by_position_sequences={by_position_sequences} must be at least 1")
byte_lengths = token_byte_lengths(tokenizer, model.config.vocab_size)
source = os.path.join(out_dir, checkpoint_name) if init_from == 'resume' else init_from

# ----------------------------------------------------------------------------- data
result, what = None, None
if text:
    content = read_utf8(text)  # BOM dropped, CRLF made LF, as the prepare scripts read text
    try:
        ids = np.array(tokenizer.encode(content), dtype=np.int64)
    except ValueError as e:  # a character model meets characters it never saw
        fail(f"{text}: {str(e).replace('prompt has', 'the text has')}; a character-level model "
             f"can only score text made of its own characters")
    if len(ids) < 2:
        fail(f"{text} has {len(ids)} token(s): nothing to predict")
    what = f"{text} ({len(content):,} characters)"
else:
    dataset = dataset or trained.get('dataset', '')
    if not dataset:
        fail("which data? pass --dataset=NAME (a prepared folder under data/) or --text=FILE")
    data_dir = os.path.join(REPO, 'data', dataset)
    if not os.path.isdir(data_dir) and os.path.isdir(dataset):
        data_dir = dataset
    bin_path = os.path.join(data_dir, f'{split}.bin')
    try:
        prepare_text_folder(data_dir)  # the transformer tutorial's train.txt / val.txt: once
        data_meta = load_meta(data_dir) if os.path.isdir(data_dir) else None
    except ValueError as e:
        fail(e)
    if split == 'test' and os.path.isdir(data_dir) and not is_line_dataset(data_meta):
        fail(f"dataset {dataset!r} has no test split (only line datasets have one); use --split=val")
    if not os.path.isfile(bin_path):
        prepare = os.path.join('data', dataset, 'prepare.py')
        fail(f"dataset {dataset!r} has no {split}.bin in {data_dir}; " +
             (f"run: python {prepare}" if os.path.isfile(os.path.join(REPO, prepare)) else
              "prepare it first (ls data/ lists the datasets that ship a prepare.py)"))
    difference = vocabulary_difference(meta, data_meta, ("the model", "the dataset"))
    if difference:
        fail(f"dataset {dataset!r} is tokenized differently from the model (model vs dataset: "
             f"{difference}); evaluate a text file with --text=FILE instead")
    if is_line_dataset(data_meta) and by_position:
        fail(f"by_position reads running text, and {dataset!r} is a line dataset; pass --text=FILE")
    if is_line_dataset(data_meta):
        try:
            line_data = LineDataset(data_dir, data_meta, splits=(split,))
            line_data.check_block_size(block_size)
            line_data.set_targets(loss_on or trained.get('loss_on') or 'all',
                                  answer_separator or trained.get('answer_separator', ''))
        except ValueError as e:
            fail(e)
        result = evaluate_lines(model, line_data, split, batch_size, byte_lengths, ctx,
                                progress=True)
        result['loss_on'] = 'answer' if line_data.answer_only else 'all'
        if accuracy and line_data.separator:
            lines = line_data.lines(split)
            scored = line_accuracy(model, tokenizer, lines, line_data.separator,
                                   data_meta['lines']['end_of_line'], batch_size, ctx,
                                   progress=True)
            result.update(accuracy=scored['accuracy'], correct=scored['correct'])
        what = f"{dataset} {split} split ({len(line_data[split]):,} lines)"
    else:
        try:
            n_tokens = count_tokens(bin_path, data_meta['dtype'] if data_meta else 'uint16')
        except ValueError as e:
            fail(e)
        if n_tokens < 2:
            fail(f"{bin_path} has {n_tokens} token(s): nothing to predict")
        ids = np.memmap(bin_path, dtype=np.dtype(data_meta['dtype'] if data_meta else 'uint16'),
                        mode='r')
        what = f"{dataset} {split} split"

if by_position:
    length = by_position_length or 4 * model.config.block_size
    try:
        losses = loss_by_position(model, ids, length, by_position_sequences, batch_size, ctx,
                                  context_window, kv_sink, kv_budget, xl_memory, progress=True)
    except ValueError as e:  # a text too short, a setting the model can't take
        fail(e)
    prefix = by_position_out or os.path.join(out_dir, 'loss_by_position')
    os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    policy = (f"xl_memory={xl_memory}" if xl_memory else
              "all history" if context_window == -1 else
              f"context_window={context_window or model.config.block_size}") + \
        (f", kv_sink={kv_sink}" if kv_sink else "") + (f", kv_budget={kv_budget}" if kv_budget else "")
    files = write_by_position({policy: losses}, model.config.block_size, prefix,
                              title=f"{source} on {what}")
    inside, past = losses[:model.config.block_size], losses[model.config.block_size:]
    result = {'loss_inside_block': float(inside.mean()),
              'loss_past_block': float(past.mean()) if len(past) else float('nan'),
              'sequences': by_position_sequences, 'length': length, 'policy': policy,
              'csv': files[0], 'png': files[1]}
    if json:
        print(json_module.dumps(result))
    else:
        print(f"{source} on {what}, {policy}: loss {result['loss_inside_block']:.4f} at positions "
              f"< {model.config.block_size}, {result['loss_past_block']:.4f} past them "
              f"(sequences of {length} tokens); wrote {files[0]} and {files[1]}")
    sys.exit(0)

if result is None:
    try:
        result = evaluate_tokens(model, ids, block_size, stride or block_size, batch_size,
                                 byte_lengths, ctx, progress=True, max_windows=max_windows)
    except ValueError as e:  # a stride longer than block_size
        fail(e)
    result.update(block_size=block_size, stride=stride or block_size)

# ----------------------------------------------------------------------------- report
result['weights_dtype'] = weights_dtype
if json:
    print(json_module.dumps(result))
else:
    print(f"{source} on {what}" + (f", {weights_dtype} weights:" if weights_dtype != 'float32' else ":"))
    print(f"  loss {result['loss']:.4f}, perplexity {result['perplexity']:.4f}, bits per byte "
          f"{result['bits_per_byte']:.4f} ({result['tokens']:,} tokens, {result['bytes']:,} bytes"
          + (f", windows of {result['block_size']} every {result['stride']} tokens)"
             if 'stride' in result else f", loss on {result['loss_on']} tokens)"))
    if 'accuracy' in result:
        print(f"  accuracy {result['accuracy']:.2%} ({result['correct']:,} of "
              f"{len(line_data[split]):,} answers exactly right)")
