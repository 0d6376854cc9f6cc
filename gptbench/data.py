"""
GPTBench's datasets from plain text files, as this repo's prepared dataset folders.

set_datasets(class_name=..., train_path=...) needs nothing prepared first: at init the text is
written into <run folder>/data/ with smallgpt's writers, and train.py trains on that folder.

    'charline'  one sample per line (smallgpt.lines.prepare_lines): train.bin, val.bin, meta.json
    'char'      characters, one continuous text (the vocabulary: every character of the text)
    'gpt2'      GPT-2 BPE tokens (tiktoken), one continuous text

Splits: val_path is the validation text if given; else the first train_split of train_path
trains and the rest validates (a charline split falls on a line boundary: round(train_split x
lines) lines train; pre_shuffle=True shuffles the lines first, with the run's seed).
train_split=1. means no validation set. train.py always evaluates a val.bin, so val.bin is then
a copy of train.bin: the "val" loss train.py prints and keeps checkpoints by is the train loss,
which is what GPTBench evaluates when there is no validation set; the adapter reports the
validation loss as inf, as GPTBench does, and val_dataset is None.

What it is not: the tokenizers or file formats themselves (smallgpt.tokenizer, smallgpt.prepare,
smallgpt.lines).
"""

import contextlib
import io
import json
import os
import shutil

import numpy as np

from gptbench.config import GPTBenchError
from smallgpt.dataloader import META_VERSION, load_meta
from smallgpt.lines import LineDataset, prepare_lines, read_lines
from smallgpt.prepare import dtype_for_vocab, read_utf8, write_bins, write_meta
from smallgpt.tokenizer import Tokenizer

CLASS_NAMES = ('gpt2', 'char', 'charline')
PARAMS = {'pre_shuffle': bool}  # what dataset.params may hold


def parse_params(params):
    """'pre_shuffle=True,...' -> {'pre_shuffle': True}; a GPTBenchError for anything else."""
    out = {}
    for item in filter(None, (p.strip() for p in (params or '').split(','))):
        name, sep, raw = item.partition('=')
        if name not in PARAMS or not sep:
            raise GPTBenchError(f"dataset.params: {item!r} is not understood; the one supported "
                                f"is pre_shuffle=True|False (as 'pre_shuffle=True')")
        if raw.strip().lower() not in ('true', 'false', '1', '0'):
            raise GPTBenchError(f"dataset.params: {name}={raw}: use True or False")
        out[name] = raw.strip().lower() in ('true', '1')
    return out


def _text_file(path, key):
    if path is None:
        raise GPTBenchError(f"dataset.{key} is not set; pass {key}=FILE to set_datasets() (or "
                            f"-dataset.{key}=FILE on the command line)")
    if not os.path.isfile(path):
        raise GPTBenchError(f"dataset.{key}={path!r}: no such file (relative to {os.getcwd()}); "
                            f"check the path")
    return path


def dataset_settings(config):
    """The settings that decide a dataset folder's content, as stored with it."""
    d = config.dataset
    return {'class_name': d.class_name, 'train_path': d.train_path, 'val_path': d.val_path,
            'train_split': d.train_split, 'params': d.params}


def prepare(folder, config, seed):
    """Write the dataset that config.dataset describes into `folder`; return what was written
    ({'settings', 'seed', 'no_val'}), also saved as folder/gptbench_dataset.json."""
    d = config.dataset
    if d.class_name not in CLASS_NAMES:
        raise GPTBenchError(f"dataset.class_name={d.class_name!r}: use one of "
                            f"{', '.join(repr(c) for c in CLASS_NAMES)} (set_datasets(class_name=...))")
    train_path = _text_file(d.train_path, 'train_path')
    val_path = _text_file(d.val_path, 'val_path') if d.val_path is not None else None
    if val_path is None and not 0 < d.train_split <= 1:
        raise GPTBenchError(f"dataset.train_split={d.train_split}: use a share in ]0, 1] "
                            f"(1: no validation set)")
    params = parse_params(d.params)
    os.makedirs(folder, exist_ok=True)
    if d.class_name == 'charline':
        no_val = _prepare_lines(folder, train_path, val_path, d.train_split,
                                params.get('pre_shuffle', False), seed)
    else:
        if params.get('pre_shuffle'):
            raise GPTBenchError(f"dataset.params pre_shuffle shuffles lines: it works with "
                                f"class_name='charline', not {d.class_name!r}")
        no_val = _prepare_text(folder, d.class_name, train_path, val_path, d.train_split)
    info = {'settings': dataset_settings(config), 'seed': seed, 'no_val': no_val}
    with open(os.path.join(folder, 'gptbench_dataset.json'), 'w', encoding='utf-8') as f:
        json.dump(info, f, indent=1)
    return info


def read_info(folder):
    path = os.path.join(folder, 'gptbench_dataset.json')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _split_count(n, train_split):
    """How many of n samples train: round(train_split * n), at least 1."""
    return min(n, max(1, round(train_split * n)))


def _prepare_lines(folder, train_path, val_path, train_split, pre_shuffle, seed):
    numbered = [(n, line) for n, line in read_lines(train_path) if line]  # empty lines dropped
    if not numbered:
        raise GPTBenchError(f"dataset.train_path={train_path!r} has no non-empty lines")
    if pre_shuffle:
        order = np.random.default_rng(seed).permutation(len(numbered))
        numbered = [numbered[i] for i in order]
    if val_path is not None:
        val = [(n, line) for n, line in read_lines(val_path) if line]
    else:
        n_train = _split_count(len(numbered), train_split)
        numbered, val = numbered[:n_train], numbered[n_train:]
    lines = numbered + val
    with contextlib.redirect_stdout(io.StringIO()):  # its summary is for the command line
        try:
            meta = prepare_lines(folder, lines, source=train_path, answer_separator=None,
                                 val_fraction=len(val) / len(lines), test_fraction=0.0,
                                 shuffle=False, keep_repeats=True)  # GPTBench keeps repeats
        except SystemExit as e:  # prepare_lines' one-line errors
            raise GPTBenchError(str(e).removeprefix('error: ')) from None
    assert meta['lines']['train_lines'] == len(numbered), meta['lines']
    if not val:
        _val_is_train(folder)
    return not val


def _prepare_text(folder, class_name, train_path, val_path, train_split):
    text = read_utf8(train_path)
    val_text = read_utf8(val_path) if val_path is not None else None
    if class_name == 'char':
        chars = sorted(set(text) | set(val_text or ''))
        vocab = np.array([ord(c) for c in chars], dtype='<u4')

        def encode(t):  # code points through numpy, as smallgpt.prepare.prepare_char does
            return np.searchsorted(vocab, np.frombuffer(t.encode('utf-32-le'), dtype='<u4'))

        meta = {'version': META_VERSION, 'tokenizer': 'char', 'vocab_size': len(chars),
                'chars': chars}
    else:
        try:
            tokenizer = Tokenizer.tiktoken('gpt2')
        except (ValueError, RuntimeError) as e:
            raise GPTBenchError(str(e)) from None

        def encode(t):
            return np.array(tokenizer.encode(t), dtype=np.int64)

        meta = {'version': META_VERSION, 'tokenizer': 'tiktoken', 'encoding': 'gpt2',
                'vocab_size': tokenizer.vocab_size}
    ids = encode(text)
    if val_text is not None:
        train_ids, val_ids = ids, encode(val_text)
    else:  # a char dataset splits on characters, a gpt2 one on tokens
        split = int(len(ids) * train_split)
        train_ids, val_ids = ids[:split], ids[split:]
    no_val = len(val_ids) == 0
    dtype = dtype_for_vocab(meta['vocab_size'])
    write_bins(folder, train_ids, train_ids if no_val else val_ids, dtype)
    meta.update(dtype=dtype, source=train_path, train_tokens=len(train_ids),
                val_tokens=len(train_ids if no_val else val_ids))
    write_meta(folder, meta)
    return no_val


def _val_is_train(folder):
    """No validation set: val.bin becomes a copy of train.bin (see the docstring)."""
    shutil.copyfile(os.path.join(folder, 'train.bin'), os.path.join(folder, 'val.bin'))
    meta = load_meta(folder)  # as written, with the token counts prepare_lines added
    meta['val_tokens'] = meta['train_tokens']
    meta['lines']['val_lines'] = meta['lines']['train_lines']
    write_meta(folder, meta)


# ----------------------------------------------------------------------------- what users see
class LineSamples:
    """The lines of one split of a charline dataset (ben.train_dataset / ben.val_dataset)."""

    def __init__(self, line_data, split):
        self.tokenizer = line_data.tokenizer
        self.lines = line_data.lines(split)
        self.lengths = line_data[split].lengths

    def __len__(self):
        return len(self.lines)

    def get_data(self):
        """The samples: one str per line, in training order."""
        return list(self.lines)

    def encdec(self, index):
        return self.lines[index]

    def get_data_split(self, index, count, sep='=', sep_included=-1):
        """(questions, answers) of lines index .. index + count - 1, each cut at its first
        `sep`: sep_included -1 ends the question with it, 1 starts the answer with it, 0 drops it."""
        if sep_included not in (-1, 0, 1):
            raise GPTBenchError(f"sep_included={sep_included}: use -1 (in the question), 1 (in "
                                f"the answer) or 0 (in neither)")
        questions, answers = [], []
        for line in self.lines[index:index + count]:
            at = line.find(sep)
            if at < 0:
                raise GPTBenchError(f"line {line!r} has no separator {sep!r}; pass sep= the text "
                                    f"that ends each question")
            question, answer = line[:at], line[at + len(sep):]
            questions.append(question + sep if sep_included == -1 else question)
            answers.append(sep + answer if sep_included == 1 else answer)
        return questions, answers

    def get_vocab_items(self):
        return list(self.tokenizer.chars)

    def get_vocab_size(self):
        return self.tokenizer.vocab_size

    def is_text_valid(self, text):
        return all(c in self.tokenizer._stoi for c in text)


class TextSamples:
    """One split of a 'char' or 'gpt2' dataset: a continuous text, sampled in windows of
    block_size tokens (GPTBench's len() counts the windows)."""

    def __init__(self, ids, tokenizer, block_size):
        self.ids, self.tokenizer, self.block_size = ids, tokenizer, block_size

    def __len__(self):
        return max(0, len(self.ids) - self.block_size)

    def get_data(self):
        return self.tokenizer.decode(self.ids)

    def encdec(self, index):
        return self.tokenizer.decode(self.ids[index:index + self.block_size])

    def get_data_split(self, index, count, sep='=', sep_included=-1):
        raise GPTBenchError("get_data_split() cuts lines into questions and answers: it works on "
                            "a class_name='charline' dataset")

    def get_vocab_items(self):
        if self.tokenizer.kind == 'char':
            return list(self.tokenizer.chars)
        return [self.tokenizer.decode([i]) for i in range(self.tokenizer.vocab_size)]

    def get_vocab_size(self):
        return self.tokenizer.vocab_size

    def is_text_valid(self, text):
        try:
            self.tokenizer.encode(text)
            return True
        except ValueError:
            return False


def load_samples(folder, no_val, block_size):
    """(train_dataset, val_dataset) of a prepared folder; val_dataset is None without a
    validation set."""
    meta = load_meta(folder)
    if meta.get('lines'):
        line_data = LineDataset(folder, meta, splits=('train', 'val'))
        train = LineSamples(line_data, 'train')
        return train, None if no_val else LineSamples(line_data, 'val')
    tokenizer = Tokenizer.from_meta(meta)
    splits = [np.fromfile(os.path.join(folder, f'{s}.bin'), dtype=meta['dtype']).astype(np.int64)
              for s in ('train', 'val')]
    train = TextSamples(splits[0], tokenizer, block_size)
    return train, None if no_val else TextSamples(splits[1], tokenizer, block_size)


def check_fits(folder, block_size, train_path):
    """A one-line GPTBenchError when train.py could not train on this folder at block_size:
    a line longer than block_size, or a split shorter than one window."""
    meta = load_meta(folder)
    if meta.get('lines'):
        longest = meta['lines']['longest']
        if longest['characters'] > block_size:
            raise GPTBenchError(
                f"a line of {train_path} has {longest['characters']} characters "
                f"({longest['text']!r}), more than model.block_size={block_size}: a charline "
                f"sample must fit one block; set model.block_size={longest['characters']} or more")
        return
    for split in ('train', 'val'):
        if meta[f'{split}_tokens'] <= block_size:
            raise GPTBenchError(f"the {split} split of {train_path} has {meta[f'{split}_tokens']} "
                                f"tokens, not more than model.block_size={block_size}; use a "
                                f"smaller block_size, more text or another train_split")
