"""
GPTBench's settings tree: empty_config(), its five sections and top-level keys, -key=value
command lines, and LogFlag. Written from GPTBench's documentation (README: Config).

    cfg = empty_config()
    cfg.model.block_size = 256          # attribute
    cfg['model.block_size'] = 512       # dotted key
    cfg.model.set(block_size=1024)      # several at once
    print(cfg.dump(2))                  # every setting, defaults included

A config only holds what was set; every other key reads as its default. A key that is not in
SCHEMA is a GPTBenchError naming the nearest real one, at the moment it is set. Besides
GPTBench's sections there is one of this repo's own: `train_py`, which passes any train.py
setting as it is (`cfg.train_py.set(loss_on='answer', answer_separator='=')`), checked against
train.py's defaults block. How each GPTBench setting becomes a train.py setting is in bench.py.

What it is not: the training or sampling (bench.py), or the dataset files (data.py).
"""

import ast
import difflib
import os
from enum import IntFlag

import workbench  # puts the checkout on sys.path; its REPO is where train.py lives


class GPTBenchError(ValueError):
    """A user mistake: one line that names the problem and the fix."""


class LogFlag(IntFlag):
    """What a Sample or Train prints (Train(name, log_mask=...)); the values are GPTBench's."""
    NONE = 0
    INIT = 1  # messages of init_new / init_pretrained / load
    SAMPLE = 2  # notes while sampling (e.g. an invalid start_text replaced)
    TRAIN_ITER = 4  # the dots and loss lines of each trained batch
    TRAIN_EVAL = 8  # the evaluation lines, checkpoint saves and samples while training
    TRAIN = TRAIN_ITER | TRAIN_EVAL
    CUDA_MEMORY = 256  # accepted; nothing is printed for it here
    ALL = INIT | SAMPLE | TRAIN | CUDA_MEMORY


# (default, type, help) per key; '' is the top level. Defaults are GPTBench's own.
SCHEMA = {
    '': {
        'name': (None, str, "run name: checkpoints go to work_dir/name (config_run: default 'model')"),
        'seed': (-1, int, "random seed; -1 or 0: a random one, printed"),
        'init': (None, str, "config_run: new, resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl "
                            "or a local Hugging Face GPT-2 folder"),
        'mode': (None, str, "config_run: train, sample or prompt"),
        'work_dir': ('./checkpoints', str, "folder that holds one folder per run name"),
        'log_mask': (int(LogFlag.ALL), int, "LogFlag bits of what to print"),
        'log_dot_period': (-0.01, float, "a dot every n trained batches; < 0: that fraction of "
                                         "train.eval_period; 0: none"),
        'log_loss_period': (-0.1, float, "a loss line every n batches; < 0: that fraction of "
                                         "train.eval_period; 0: none"),
        'log_sample_period': (-10.0, float, "a sample every n batches; < 0: that multiple of "
                                            "train.eval_period; 0: none"),
    },
    'sample': {
        'max_len': (100, int, "max generated token count"),
        'count': (1, int, "how many samples of the same start_text"),
        'start_text': (None, str, "start text; None: a random vocabulary item each time; "
                                  "several separated by start_text_sep (count is then 1)"),
        'start_text_sep': ('|', str, "separates several start texts in start_text"),
        'emit_start': (True, bool, "print start_text before the sample (if emit_after is None)"),
        'emit_after': (None, str, "print only what comes after this text"),
        'emit_before': (None, str, "stop before printing this text"),
        'flush': (True, bool, "print each token as it is generated"),
        'eot_stop': (0, int, "at GPT-2's <|endoftext|>: 0 go on, -1 stop before it, 1 stop "
                             "after it (printed)"),
        'top': (0.0, float, "0: off; ]0, 1[: top_p; >= 1: top_k(int(top)); [-1, 0[: "
                            "top_k(vocab_size * -top)"),
        'temp': (1.0, float, "temperature (0: greedy)"),
        'max_batch_size': (None, int, "most start texts generated as one batch (None: 256)"),
        'multiline_prompt': (False, bool, "prompt(): read lines until Ctrl+D"),
    },
    'train': {
        'eval_period': (100, int, "batches between evaluations (and checkpoint saves); 0: none"),
        'eval_type': (1.0, float, "eval loss: 0 train, 1 validation, in between a weighted mix"),
        'eval_iters': (100, int, "batches per split in each evaluation"),
        'eval_save_checkpt': (1, int, "0 never, 1 on a new lower eval loss, 2 always"),
        'eval_save_loss': ('csv,tensorboard', str, "'csv' (log.csv, always written here), "
                                                   "'tensorboard'"),
    },
    'dataset': {
        'class_name': (None, str, "'gpt2' (GPT-2 BPE), 'char' (characters, continuous), "
                                  "'charline' (characters, one sample per line)"),
        'train_path': (None, str, "the text file to train on"),
        'train_split': (0.9, float, "share of train_path for training, the rest validation "
                                    "(1: no validation set); unused with val_path"),
        'val_path': (None, str, "a separate validation text file"),
        'params': (None, str, "'name=value,...' extra dataset settings: pre_shuffle=True"),
    },
    'model': {
        'device': ('auto', str, "'auto' (cuda > mps > cpu), 'cpu', 'cuda', ..."),
        'dtype': ('float32', str, "'float32' or 'bfloat16'"),
        'n_layer': (None, int, "transformer blocks"),
        'n_head': (None, int, "attention heads"),
        'n_embd': (None, int, "embedding width, a multiple of n_head"),
        'vocab_size': (None, int, "set from the dataset"),
        'block_size': (None, int, "context length in tokens"),
        'dropout': (0.1, float, "dropout"),
    },
    'trainer': {
        'n_workers': (0, int, "accepted and unused: batches are read from memory-mapped files"),
        'batch_size': (32, int, "samples per training batch"),
        'max_samples': (None, int, "stop after this many trained samples; -n: n epochs"),
        'grad_norm_clip': (1.0, float, "clip the gradient norm to this (0: off)"),
        'optimizer': ('adamw', str, "'adamw' ('sgd' is not supported here)"),
        'learning_rate': (1e-4, float, "learning rate (constant, as in GPTBench)"),
        'adamw_beta1': (0.9, float, "AdamW beta1"),
        'adamw_beta2': (0.95, float, "AdamW beta2"),
        'adamw_weight_decay': (0.1, float, "AdamW weight decay (matrices only)"),
    },
}
SECTIONS = tuple(s for s in SCHEMA if s) + ('train_py',)
TRAIN_PY_HELP = "any setting of train.py's defaults block, passed as --key=value after the mapped ones"


def train_py_defaults():
    """{key: default} of train.py's defaults block (the assignments before its configurator
    import), read from the file so the names can never drift from train.py's own."""
    path = os.path.join(workbench.REPO, 'train.py')
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    defaults = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == 'configurator':
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:  # literals, and the odd product such as 5 * 8
                value = eval(compile(ast.Expression(node.value), path, 'eval'), {'__builtins__': {}})
            except Exception:
                continue
            if isinstance(value, (bool, int, float, str)):
                defaults[node.targets[0].id] = value
    return defaults


def all_keys():
    """Every dotted key of the schema ('seed', 'model.n_layer', ...)."""
    return [f"{s}.{k}" if s else k for s, keys in SCHEMA.items() for k in keys]


def unknown_key(key, known):
    """The GPTBenchError for a key that is not one of `known` (dotted), naming the nearest."""
    leaf = key.rpartition('.')[2]
    close = [k for k in known if k.rpartition('.')[2] == leaf]  # the right name in another section
    close += [k for k in difflib.get_close_matches(key, known, n=2, cutoff=0.6) if k not in close]
    if not close:  # a typo in the name itself: match it alone, in whichever section
        by_leaf = {}
        for k in known:
            by_leaf.setdefault(k.rpartition('.')[2], k)
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)]
    hint = f"did you mean {' or '.join(repr(c) for c in close[:2])}?" if close else \
        "empty_config().help() lists the keys"
    return GPTBenchError(f"unknown config key {key!r}; {hint}")


def coerce(key, value, kind):
    """value as the key's type (None is always allowed: 'not set'), or a one-line GPTBenchError."""
    if value is None or isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, int) and value in (0, 1):
        return bool(value)  # GPTBench's command lines write booleans as 0 / 1
    if kind is int and isinstance(value, IntFlag):
        return int(value)
    raise GPTBenchError(f"{key}={value!r}: expected {kind.__name__}")


def parse_value(key, raw, kind):
    """A command-line string as the key's type: 'None' is None, true/false/1/0 for booleans;
    a str key keeps the text as typed."""
    if raw == 'None':
        return None
    try:
        if kind is str:
            return raw
        if kind is bool:
            if raw.lower() not in ('true', '1', 'false', '0'):
                raise ValueError(raw)
            return raw.lower() in ('true', '1')
        if kind is int:
            try:
                return int(raw)
            except ValueError:
                value = float(raw)  # 1e4 is an int too
                if not value.is_integer():
                    raise
                return int(value)
        return float(raw)
    except ValueError:
        raise GPTBenchError(f"-{key}={raw}: expected {kind.__name__}") from None


class Conf:
    """One level of the settings tree: the root (top-level keys and the sections as attributes)
    or a section. It stores only what was set; the rest reads as the schema's default."""

    def __init__(self, section=''):
        object.__setattr__(self, '_section', section)
        object.__setattr__(self, '_values', {})
        if section == '':
            object.__setattr__(self, '_sections', {s: Conf(s) for s in SECTIONS})

    # ------------------------------------------------------------------ names and types
    def _path(self, key):
        return f"{self._section}.{key}" if self._section else key

    def _kind(self, key):
        """The type of `key` here, or a GPTBenchError naming the nearest key."""
        if self._section == 'train_py':
            defaults = train_py_defaults()
            if key not in defaults:
                raise unknown_key(self._path(key), [f"train_py.{k}" for k in defaults])
            return type(defaults[key])
        if key not in SCHEMA[self._section]:
            raise unknown_key(self._path(key), all_keys())
        return SCHEMA[self._section][key][1]

    # ------------------------------------------------------------------ access
    def __getattr__(self, key):
        if key.startswith('__'):  # copy, pickle and friends probe these
            raise AttributeError(key)
        if self._section == '' and key in self._sections:
            return self._sections[key]
        self._kind(key)
        if key in self._values:
            return self._values[key]
        return train_py_defaults()[key] if self._section == 'train_py' \
            else SCHEMA[self._section][key][0]

    def __setattr__(self, key, value):
        if self._section == '' and key in SECTIONS:
            if not isinstance(value, Conf):
                raise GPTBenchError(f"{key} is a section; set its keys: cfg.{key}.set(...)")
            self._sections[key]._values.update(value._values)
            return
        self._values[key] = coerce(self._path(key), value, self._kind(key))

    def __getitem__(self, dotted):
        node, key = self._walk(dotted)
        return getattr(node, key)

    def __setitem__(self, dotted, value):
        node, key = self._walk(dotted)
        setattr(node, key, value)

    def _walk(self, dotted):
        section, _, key = dotted.rpartition('.')
        if not section:
            return self, key
        if self._section or section not in SECTIONS:
            raise unknown_key(self._path(dotted), all_keys())
        return self._sections[section], key

    def set(self, **settings):
        for key, value in settings.items():
            setattr(self, key, value)
        return self

    def has(self, key):
        """Whether `key` (dotted from the root) was set, rather than left at its default."""
        node, key = self._walk(key)
        return key in node._values

    def get(self, key, default=None):
        return self[key] if self.has(key) else default

    def unset(self, key):
        node, key = self._walk(key)
        node._values.pop(key, None)

    # ------------------------------------------------------------------ whole trees
    def to_dict(self, only_set=True):
        """{dotted key: value}: what was set, or (only_set=False) every key with its value."""
        out = {}
        keys = list(self._values) if only_set or self._section == 'train_py' \
            else list(SCHEMA[self._section])
        for key in keys:
            out[self._path(key)] = getattr(self, key)
        if self._section == '':
            for section in self._sections.values():
                out.update(section.to_dict(only_set))
        return out

    def update(self, other):
        """Set every key that `other` (a Conf, or a dict of dotted keys) has set."""
        items = other.to_dict() if isinstance(other, Conf) else dict(other)
        for dotted, value in items.items():
            self[dotted] = value
        return self

    def copy(self):
        return empty_config().update(self) if self._section == '' else Conf(self._section).update(
            {k.rpartition('.')[2]: v for k, v in self.to_dict().items()})

    def update_from_args(self, args):
        """Apply '-key=value' / '-section.key=value' arguments (one or two dashes)."""
        for arg in args:
            if not arg.startswith('-'):
                raise GPTBenchError(f"{arg!r}: settings are -key=value, e.g. -trainer.batch_size=256")
            dotted, sep, raw = arg.lstrip('-').partition('=')
            if not sep:
                raise GPTBenchError(f"{arg} needs a value: -{dotted}=VALUE")
            node, key = self._walk(dotted)
            setattr(node, key, parse_value(node._path(key), raw, node._kind(key)))
        return self

    def dump(self, indent=2):
        """Every setting as 'key=value' lines (defaults included), sections indented."""
        pad = ' ' * indent
        lines = [f"{key}={getattr(self, key)}" for key in SCHEMA['']] if self._section == '' else []
        sections = self._sections.items() if self._section == '' else [(self._section, self)]
        for name, section in sections:
            keys = list(section._values) if name == 'train_py' else list(SCHEMA[name])
            if name == 'train_py' and not keys:
                continue
            lines.append(f"{name}:")
            lines += [f"{pad}{key}={getattr(section, key)}" for key in keys]
        return '\n'.join(lines)

    def help(self):
        """Print every key with its default and what it does."""
        for section, keys in SCHEMA.items():
            for key, (default, kind, text) in keys.items():
                print(f"{section + '.' if section else ''}{key} = {default!r}  ({kind.__name__}) {text}")
        print(f"train_py.<key>  {TRAIN_PY_HELP}")

    def __repr__(self):
        return f"Conf({self.to_dict()!r})"


def empty_config():
    """A settings tree with nothing set: what you set overrides the defaults when a model is
    initialized (init_new, init_pretrained, load)."""
    return Conf()


def merge_config_from_sysargv(sys_argv, base_config=None):
    """base_config (or an empty one) updated with the -key=value arguments of sys_argv[1:]."""
    config = base_config if base_config is not None else empty_config()
    return config.update_from_args(list(sys_argv[1:]))
