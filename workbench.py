"""
The Python API, for notebooks and scripts: a few lines to prepare a task, train, sample, evaluate.

    import workbench as wb
    wb.prepare('add', digits=2)                          # data/add/prepare.py --digits=2
    run = wb.train('config/train_add.py', max_iters=300) # train.py in a subprocess; run = log.csv rows
    m = wb.load('out-add')                               # a run folder, 'gpt2', or a Hugging Face folder
    m.generate('12+34=', temperature=0)                  # '46'
    m.accuracy(split='test')                             # {'accuracy': ..., 'correct': ..., ...}
    m.evaluate(split='val')                              # {'loss', 'perplexity', 'bits_per_byte', 'tokens', ...}
    m.prompt()                                           # sample.py's interactive prompt loop

What it is not: a second implementation. Training is train.py itself, started as a subprocess
with --key=value overrides (so a notebook run and a command-line run are the same run); loading,
sampling and evaluation call what the scripts use (model.py and the smallgpt package).

Where things are: the scripts (train.py, data/*/prepare.py) are run from the checkout this file
is in, so install it editable (`pip install -e .` in a clone): that installs the smallgpt package
and this module; model.py stays a file of the checkout, which this module puts on sys.path. Dataset names mean folders under
that checkout's data/ (the same as --dataset on the command line); a dataset with a '/' in it is
a folder anywhere. Relative out_dir paths are relative to the current folder, as for the scripts.
"""

import contextlib
import os
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.abspath(__file__))
if REPO not in sys.path:  # imported from an install: model.py (the one students edit) is here
    sys.path.insert(0, REPO)

from model import GPT  # noqa: E402  (after the line above)
from smallgpt.checkpoint import load_model
from smallgpt.quantize import quantize_weights
from smallgpt.generate import TextSample, decode_samples
from smallgpt.metrics import evaluate_lines, evaluate_tokens, line_accuracy, token_byte_lengths
from smallgpt.interactive import prompt_loop, setting_error
from smallgpt.lines import LineDataset, is_line_dataset
from smallgpt.runlog import read_log
from smallgpt.device import autocast_context, device_type_of, pick_device, pick_dtype
from smallgpt.tokenizer import Tokenizer, check_vocab_fits, encode_prompt, vocabulary_difference
from smallgpt.dataloader import load_meta
from smallgpt.prepare import read_utf8
DATA = os.path.join(REPO, 'data')


def _script(relative_path):
    """A script of the checkout this module lives in; a one-line error when it isn't there."""
    path = os.path.join(REPO, relative_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{relative_path} is not next to workbench.py in {REPO}: the API "
                                f"runs the scripts of its checkout; install a clone with pip install -e .")
    return path


def dataset_dir(dataset):
    """A dataset name (a folder under data/) or a path (anything with a '/')."""
    return dataset if os.sep in dataset or '/' in dataset else os.path.join(DATA, dataset)


def _arguments(options, flags=True):
    """--key=value for each option. flags=True (prepare.py's argparse): True is a bare --flag
    and False leaves it out. flags=False (train.py's configurator, where a bare --flag is an
    error and a left-out key keeps its default, often True): --key=True and --key=False."""
    args = []
    for key, value in options.items():
        if flags and value is True:
            args.append(f'--{key}')
        elif not (flags and value is False) and value is not None:
            args.append(f'--{key}={value}')
    return args


# ----------------------------------------------------------------------------- data
def prepare(task, **options):
    """Run data/<task>/prepare.py with --key=value options (prepare('add', digits=2),
    prepare('charline', input='lines.txt', dataset='mine')); return the dataset's folder."""
    script = _script(os.path.join('data', task, 'prepare.py'))
    done = subprocess.run([sys.executable, script, *_arguments(options)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"data/{task}/prepare.py failed: {_tail(done.stderr)}")
    return dataset_dir(options['dataset']) if options.get('dataset') else os.path.dirname(script)


def _tail(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else '(no error output)'


# ----------------------------------------------------------------------------- training
class Run(list):
    """The rows of a run's log.csv (dicts: iter, kind 'train'/'eval', loss, val_loss, accuracy,
    ... as smallgpt/runlog.py writes them), with the run's folder."""

    def __init__(self, rows, out_dir):
        super().__init__(rows)
        self.out_dir = out_dir

    def column(self, name, kind='eval'):
        """(iters, values) of one column over the rows of one kind, for plotting."""
        rows = [r for r in self if r['kind'] == kind and r[name] is not None]
        return [r['iter'] for r in rows], [r[name] for r in rows]

    def load(self, checkpoint_name='ckpt.pt', **options):
        return load(self.out_dir, checkpoint_name=checkpoint_name, **options)


def _dry_run_setting(args, cwd, key):
    """A setting as the train.py command `args` would run with it. train.py reads its own
    config files and --key=value (NANOGPT_DRY_RUN=1: print the settings, exit before any work),
    so a config file that builds on train.py's defaults (cpu_small.py reads out_dir) means what
    it means on the command line, and no config file runs in this process."""
    import ast
    done = subprocess.run(args, cwd=cwd, env=dict(os.environ, NANOGPT_DRY_RUN='1'),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {done.returncode}): {_tail(done.stderr)}")
    values = [line.split(' = ', 1)[1] for line in done.stdout.splitlines()
              if line.startswith(f'  {key} = ')]
    assert values, f"train.py's dry run printed no {key}: {done.stdout[-500:]}"
    return ast.literal_eval(values[-1])


def train(config_file=None, on_row=None, echo=False, cwd=None, poll_seconds=0.5, on_line=None,
          **overrides):
    """Run train.py [config_file] --key=value ... and return its log.csv rows as a Run.
    config_file: one file, or a list of them applied in order (the CPU preset:
    ['config/train_don_char.py', 'config/cpu_small.py']).

    on_row(row) is called for each new row of log.csv while the run goes; echo=True prints
    train.py's output as it comes; on_line(line) gets each complete line of that output (without
    its newline), e.g. to show it another way (the gptbench package does). A failed run raises
    RuntimeError with train.py's last error line; an interrupt (the notebook's stop button)
    stops the run too."""
    cwd = os.path.abspath(cwd or os.getcwd())
    args = [sys.executable, _script('train.py')]
    out_dir = overrides.get('out_dir')
    config_files = [config_file] if isinstance(config_file, str) else list(config_file or [])
    for name in config_files:  # several: in order, as on train.py's command line
        found = [p for p in (os.path.join(cwd, name), os.path.join(REPO, name)) if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(f"config file {name!r} not found in {cwd} or {REPO}")
        args.append(found[0])
    args += _arguments(overrides, flags=False)
    if config_files and not out_dir:
        out_dir = _dry_run_setting(args, cwd, 'out_dir')
    out_dir = os.path.join(cwd, out_dir or 'out')  # train.py's default out_dir is 'out'
    csv_path = os.path.join(out_dir, 'log.csv')
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
        with open(out_path, 'w') as out, open(err_path, 'w') as err:
            # its own session: a terminal's Ctrl+C reaches only this process, whose terminate()
            # below is then train.py's one stop request (finish the step, write last.pt); a
            # second signal would make train.py quit without saving
            process = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err,
                                       start_new_session=True)
        shown = 0
        partial = b''  # the start of a line whose end train.py has not written yet
        try:
            while True:
                finished = process.poll() is not None
                if echo or on_line:
                    with open(out_path, 'rb') as f:  # its own file offset: the child keeps writing
                        f.seek(shown)
                        new = f.read()
                    shown += len(new)
                    if echo:
                        print(new.decode('utf-8', errors='replace'), end='', flush=True)
                    if on_line:
                        *lines, partial = (partial + new).split(b'\n')
                        if finished and partial:  # the last line, written without a newline
                            lines, partial = lines + [partial], b''
                        for line in lines:
                            on_line(line.decode('utf-8', errors='replace'))
                # a log.csv older than this run is a previous run's: wait for train.py's own
                if os.path.isfile(csv_path) and os.path.getmtime(csv_path) >= started - 1:
                    latest = read_log(csv_path)
                    for row in latest[len(rows):]:
                        if on_row:
                            on_row(row)
                    rows = latest
                if finished:
                    break
                time.sleep(poll_seconds)
        except BaseException:  # KeyboardInterrupt included: don't leave a run going
            process.terminate()
            process.wait()
            raise
        with open(err_path, encoding='utf-8', errors='replace') as f:
            stderr = f.read()
    if process.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {process.returncode}): {_tail(stderr)}")
    return Run(rows, out_dir)


# ----------------------------------------------------------------------------- a loaded model
def load(source='out', checkpoint_name='ckpt.pt', device='cpu', dtype='float32', weights_dtype='float32'):
    """A run folder written by train.py (its checkpoint_name), or GPT-2 ('gpt2', 'gpt2-xl', ...)
    or a Hugging Face folder (it has a config.json): a Model with its tokenizer. weights_dtype
    'int8' or 'bfloat16' stores the weights in fewer bytes for faster decoding (sample.py's)."""
    is_hf = source.startswith('gpt2') or os.path.isfile(os.path.join(source, 'config.json'))
    device = pick_device(device)
    device_type = device_type_of(device)
    dtype = pick_dtype(dtype, device_type, quiet=True, training=False)
    model, meta, config = load_model(GPT, source if is_hf else 'resume', source, checkpoint_name,
                                     device)
    quantize_weights(model, weights_dtype)
    return Model(model, Tokenizer.from_meta(meta), meta, config or {},
                 autocast_context(device_type, dtype), weights_dtype)


class Model:
    """A model, its tokenizer and what it was trained with (config: train.py's settings)."""

    def __init__(self, model, tokenizer, meta, config, ctx, weights_dtype='float32'):
        self.model, self.tokenizer, self.meta, self.config, self.ctx = \
            model, tokenizer, meta, config, ctx
        self.weights_dtype = weights_dtype  # what quantize_weights stored them as
        check_vocab_fits(tokenizer, model.config.vocab_size)

    def _stop_ids(self, stop_at_eot, stop_at_line_end):
        ids = [self.tokenizer.eot_token] if stop_at_eot and self.tokenizer.eot_token is not None \
            else []
        if stop_at_line_end and is_line_dataset(self.meta):  # a line ends its sample
            ids.append(self.tokenizer.encode(self.meta['lines']['end_of_line'])[0])
        return ids

    def _samples(self, rows, settings, stop, stop_ids):
        """TextSamples of `rows` (prompt texts) and a generator that grows them one step a time."""
        for name in ('max_new_tokens', 'temperature', 'top_k', 'top_p'):
            if setting_error(name, settings[name]):
                raise ValueError(setting_error(name, settings[name]))
        samples = [TextSample(p, self.tokenizer, stop, stop_ids) for p in rows]
        tokens = self.model.generate_stream(
            [encode_prompt(self.tokenizer, p) for p in rows], settings['max_new_tokens'],
            settings['temperature'], settings['top_k'] or None, settings['top_p'])
        return samples, decode_samples(samples, tokens)

    def generate(self, prompt, max_new_tokens=100, temperature=0.8, top_k=200, top_p=1.0,
                 num_samples=1, stop='', stop_at_eot=False, stop_at_line_end=True, seed=1337,
                 stream=False):
        """What the model writes after `prompt` (the prompt not included), as sample.py would
        with the same settings and seed. A str prompt and num_samples=1 give a str; a list of
        prompts gives a list (num_samples per prompt, in order), generated as one batch.
        stream=True (one prompt, one sample): an iterator of text pieces as they come.
        seed=None continues the random generator instead of reseeding it."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or num_samples < 1:
            raise ValueError(f"nothing to generate: {len(prompts)} prompts, num_samples={num_samples}")
        if seed is not None:
            torch.manual_seed(seed)
        rows = [p for p in prompts for _ in range(num_samples)]
        settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p)
        samples, steps = self._samples(rows, settings, stop,
                                       self._stop_ids(stop_at_eot, stop_at_line_end))
        if stream:
            if len(rows) != 1:
                raise ValueError(f"stream=True streams one sample; got {len(rows)} rows "
                                 f"(pass one prompt and num_samples=1)")
            return self._stream(samples[0], steps)
        with self.ctx, contextlib.closing(steps):
            for _ in steps:
                pass
        texts = [s.text for s in samples]
        return texts[0] if isinstance(prompt, str) and num_samples == 1 else texts

    def _stream(self, sample, steps):
        with self.ctx, contextlib.closing(steps):
            for _ in steps:
                piece = sample.ready_text()
                if piece:
                    yield piece
        piece = sample.ready_text()  # the held-back tail, now that the sample is finished
        if piece:
            yield piece

    def prompt(self, max_new_tokens=500, temperature=0.8, top_k=200, top_p=1.0, seed=1337,
               num_samples=1, stop='', stop_at_eot=False, stop_at_line_end=True):
        """sample.py's interactive prompt loop (smallgpt/interactive.py) on this model; /quit leaves."""
        settings = dict(num_samples=num_samples, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        torch.manual_seed(seed)
        stop_ids = self._stop_ids(stop_at_eot, stop_at_line_end)

        def generate(prompts, settings, show_stream):
            rows = [p for p in prompts for _ in range(settings['num_samples'])]
            samples, steps = self._samples(rows, settings, stop, stop_ids)
            if show_stream:
                print(rows[0], end='', flush=True)
            with self.ctx, contextlib.closing(steps):
                for _ in steps:
                    if show_stream:
                        print(samples[0].ready_text(), end='', flush=True)
            if show_stream:
                print(samples[0].ready_text(), flush=True)
            return samples

        prompt_loop(generate, settings, lambda text: encode_prompt(self.tokenizer, text))

    # ------------------------------------------------------------------------- evaluation
    def _line_data(self, dataset, split):
        dataset = dataset or self.config.get('dataset')
        if not dataset:
            raise ValueError("which data? pass dataset=NAME (a folder under data/) or a path")
        folder = dataset_dir(dataset)
        meta = load_meta(folder) if os.path.isdir(folder) else None
        if not os.path.isfile(os.path.join(folder, f'{split}.bin')):
            raise ValueError(f"dataset {dataset!r} has no {split}.bin in {folder}; prepare it "
                             f"first (workbench.prepare or its data/<name>/prepare.py)")
        difference = vocabulary_difference(self.meta, meta, ("the model", "the dataset"))
        if difference:
            raise ValueError(f"dataset {dataset!r} is tokenized differently from the model (model "
                             f"vs dataset: {difference}); evaluate a text file with text=FILE instead")
        return folder, meta

    def evaluate(self, dataset=None, split='val', text=None, batch_size=8, block_size=0,
                 stride=0, max_windows=0, loss_on=None, progress=False):
        """eval.py --json=True as a dict: loss, perplexity, bits_per_byte, tokens, bytes (and
        accuracy/correct on a line dataset with an answer separator). dataset defaults to the
        one the run trained on; text=FILE scores a text file instead."""
        block_size = block_size or self.model.config.block_size
        byte_lengths = token_byte_lengths(self.tokenizer, self.model.config.vocab_size)
        if text:
            ids = self.tokenizer.encode(read_utf8(text))
        else:
            folder, meta = self._line_data(dataset, split)
            if is_line_dataset(meta):
                lines = LineDataset(folder, meta, splits=(split,))
                lines.check_block_size(block_size)
                lines.set_targets(loss_on or self.config.get('loss_on') or 'all',
                                  self.config.get('answer_separator', ''))
                result = evaluate_lines(self.model, lines, split, batch_size, byte_lengths,
                                        self.ctx, progress=progress)
                result['loss_on'] = 'answer' if lines.answer_only else 'all'
                if lines.separator:
                    scored = self.accuracy(dataset, split, separator=lines.separator,
                                           batch_size=batch_size)
                    result.update(accuracy=scored['accuracy'], correct=scored['correct'])
                return dict(result, weights_dtype=self.weights_dtype)
            import numpy as np
            ids = np.memmap(os.path.join(folder, f'{split}.bin'), dtype=np.dtype(meta['dtype']),
                            mode='r')
        result = evaluate_tokens(self.model, ids, block_size, stride or block_size, batch_size,
                                 byte_lengths, self.ctx, progress=progress, max_windows=max_windows)
        result.update(block_size=block_size, stride=stride or block_size)
        return dict(result, weights_dtype=self.weights_dtype)

    def accuracy(self, dataset=None, split='test', count=None, separator=None, batch_size=256,
                 progress=False):
        """Exact-match accuracy of the greedy answers on a line dataset's split (the first
        `count` lines, or all): {'accuracy', 'correct', 'lines', 'predictions'}."""
        folder, meta = self._line_data(dataset, split)
        if not is_line_dataset(meta):
            raise ValueError(f"{folder} is not a line dataset: accuracy needs one (docs/lines.md)")
        lines = LineDataset(folder, meta, splits=(split,))
        separator = separator or self.config.get('answer_separator') or lines.separator
        if not separator:
            raise ValueError(f"{folder} has no answer separator; pass separator='=' (or the one "
                             f"its lines use)")
        return line_accuracy(self.model, self.tokenizer, lines.lines(split, count), separator,
                             meta['lines']['end_of_line'], batch_size, self.ctx, progress)
