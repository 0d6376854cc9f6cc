"""
GPTBench's Sample object over this repo's own pieces: a model from init_new, init_pretrained or
load, then sample(), prompt() and measure_accuracy() through model.py's KV-cache decoding, in
this process. Train (training.py) adds train() and save(). Written from GPTBench's README.

    ben = Sample('add2')           # or Train('add2', seed=...) to train too (training.py)
    ben.load()                     # the best checkpoint (lowest val loss) of run 'add2'
    ben.sample('21+89=')           # prints 21+89=110 once trained
    q, a = ben.val_dataset.get_data_split(0, len(ben.val_dataset))
    ben.measure_accuracy(q, a)     # greedy answers, batched through the KV cache

A run named NAME lives in work_dir/NAME (./checkpoints/NAME): train.py's ckpt.pt (best val
loss: what load() reads), last.pt (where train() continues), log.csv and loss.png; data/ (the
dataset prepared from the text files); gptbench.json (the settings tree); run.log (config_run's
command lines). ckpt.pt and last.pt are ordinary checkpoints of this repo:
python sample.py --out_dir=checkpoints/NAME works on them.

What it is not: training (training.py runs train.py), or GPTBench's code (none was copied).
"""

import json
import os
import random

import torch

import workbench  # noqa: F401  (puts the checkout on sys.path, where model.py is)
from model import GPT, GPTConfig
from gptbench import data
from gptbench.config import GPTBenchError, LogFlag, empty_config
from smallgpt.checkpoint import CheckpointError, load_model, peek_checkpoint
from smallgpt.dataloader import load_meta
from smallgpt.device import autocast_context, pick_device, pick_dtype
from smallgpt.generate import TextSample
from smallgpt.hf.common import GPT2_NAMES
from smallgpt.prepare import hub_reachable
from smallgpt.runlog import read_log
from smallgpt.tokenizer import EOT_TEXT, Tokenizer, encode_prompt, vocabulary_difference

DEFAULT_NAME = 'model'
DEFAULT_WORK_DIR = './checkpoints'
SETTINGS_FILE = 'gptbench.json'
MEASURE_BATCH = 256  # sample.max_batch_size None: rows per batch (a KV cache per row adds up)


def top_filter(top, vocab_size):
    """GPTBench's sample.top as (top_k, top_p): 0 off, ]0, 1[ top_p, >= 1 top_k(int(top)),
    [-1, 0[ top_k of that share of the vocabulary."""
    if top == 0:
        return None, None
    if 0 < top < 1:
        return None, float(top)
    if top >= 1:
        return min(int(top), vocab_size), None
    if -1 <= top < 0:
        return max(1, int(vocab_size * -top)), None
    raise GPTBenchError(f"sample.top={top}: use 0 (off), ]0, 1[ (top_p), >= 1 (top_k) or "
                        f"[-1, 0[ (top_k as a share of the vocabulary)")


class Sample:
    """A model to sample from and measure: init_new / init_pretrained / load, then sample(),
    prompt(), measure_accuracy()."""

    def __init__(self, name=DEFAULT_NAME, work_dir=DEFAULT_WORK_DIR, seed=None,
                 log_mask=LogFlag.ALL):
        self.work_dir = work_dir
        self.log_mask = LogFlag(log_mask)
        self.config = empty_config()
        if seed is not None:
            self.config.seed = seed
        self.model = self.tokenizer = self.meta = None
        self.train_dataset = self.val_dataset = None
        self.seed = None
        self._data_info = None  # data.prepare's record of the dataset folder
        self._source = None  # the checkpoint file self.model came from (None: built here)
        self._init_from = None  # where the next train() starts: 'scratch', 'resume:FILE', or GPT-2
        self.set_name(name)
        self.state = self._empty_state()
        self.last_saved_state = dict(self.state)

    # ------------------------------------------------------------------ small things
    def set_name(self, name):
        self.name = name
        self.path = os.path.join(self.work_dir, name)

    def set_seed(self, seed):
        """Seed the random generators now (and use this seed for the run); 0 or -1 draw one."""
        if seed in (None, 0, -1):
            seed = random.SystemRandom().randrange(1, 2 ** 31)
            self.log(LogFlag.INIT, f"Seed: {seed} (drawn at random; pass seed={seed} to repeat)")
        self.seed = self.config.seed = seed
        random.seed(seed)
        torch.manual_seed(seed)
        return seed

    def log(self, flag, *args, **kwargs):
        if self.log_mask & flag:
            print(*args, **kwargs)

    def get_config(self):
        return self.config

    def can_load(self, name=None):
        return os.path.isfile(os.path.join(self.work_dir, name or self.name, 'ckpt.pt'))

    def _empty_state(self):
        inf = float('inf')
        return {'iter_num': 0, 'n_samples': 0, 'train_loss': inf, 'val_loss': inf, 'eval_loss': inf}

    def set_datasets(self, class_name=None, train_path=None, train_split=0.9, val_path=None,
                     params=None, **params_kwargs):
        """Which text files to train on (prepared into the run's folder at init). params is
        GPTBench's 'name=value,...' string; keyword params (pre_shuffle=True) add to it."""
        if class_name not in data.CLASS_NAMES:
            raise GPTBenchError(f"set_datasets(class_name={class_name!r}): use one of "
                                f"{', '.join(repr(c) for c in data.CLASS_NAMES)}")
        if train_path is None:
            raise GPTBenchError("set_datasets() needs train_path=FILE, the text file to train on")
        extra = ','.join(f"{k}={v}" for k, v in params_kwargs.items())
        params = ','.join(p for p in (params, extra) if p) or None
        data.parse_params(params)  # a mistake in it: now, not at init
        self.config.dataset.set(class_name=class_name, train_path=train_path,
                                train_split=train_split, val_path=val_path, params=params)

    # ------------------------------------------------------------------ init
    def init_new(self, over_config=None, name=None):
        """A new model with config's model settings, the dataset's vocabulary."""
        self._init('new', over_config, name)

    def init_pretrained(self, init_type, over_config=None, name=None):
        """GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' (from the Hugging Face
        cache, downloaded the first time) or a local Hugging Face GPT-2 folder."""
        if init_type not in GPT2_NAMES and not os.path.isdir(init_type):
            raise GPTBenchError(f"init_pretrained({init_type!r}): use {', '.join(GPT2_NAMES)} or "
                                f"the path of a local Hugging Face GPT-2 folder")
        self._init(init_type, over_config, name)

    def load(self, over_config=None, name=None):
        """The last saved checkpoint of this name (ckpt.pt: the lowest validation loss)."""
        self._init('resume', over_config, name)

    def _init(self, kind, over_config, name):
        if name is not None:
            self.set_name(name)
        self.model = self.tokenizer = self.meta = self._data_info = None
        self.train_dataset = self.val_dataset = None
        config = self.config.copy()
        saved = None
        if kind == 'resume':
            if not self.can_load() and os.path.isfile(os.path.join(self.path, 'model.pt')):
                raise GPTBenchError(f"{self.path} holds a GPTBench checkpoint (model.pt, "
                                    f"state.json), which this repo does not read; train it "
                                    f"again here (init_new + train()) to get a ckpt.pt")
            if not self.can_load():
                raise GPTBenchError(
                    f"no checkpoint named {self.name!r} in {self.work_dir} "
                    f"({os.path.join(self.path, 'ckpt.pt')}); train one first (init_new + "
                    f"train(), or -init=new -mode=train -name={self.name}), or check the name")
            saved = self._read_settings()
            if saved:
                config.update(saved['config'])
        if over_config is not None:
            config.update(over_config)
        for key in ('name', 'init', 'mode'):  # config_run's, not the model's
            config.unset(key)
        self.config = config
        self.set_seed(saved['seed'] if saved and not over_config_has(over_config, 'seed')
                      else config.seed)
        try:
            self.device = pick_device(config.model.device)
            device_type = 'cuda' if 'cuda' in self.device else self.device.split(':')[0]
            dtype = pick_dtype(config.model.dtype, device_type, quiet=True, training=False)
        except ValueError as e:
            raise GPTBenchError(f"model.device / model.dtype: {e}") from None
        self.ctx = autocast_context(device_type, dtype)

        if kind == 'new':
            self.log(LogFlag.INIT, f"Initializing new model {self.name}")
            self._prepare_data(saved=None)
            self._build_new()
            self._source, self._init_from = None, 'scratch'
            self.state = self._empty_state()
            self.last_saved_state = dict(self.state)
        elif kind == 'resume':
            self.log(LogFlag.INIT, f"Loading checkpoint from {self.path}")
            self._prepare_data(saved)
            self._load_file('ckpt.pt')
            self.last_saved_state = dict(self.state)
            it = self.state
            self.log(LogFlag.INIT, f"Checkpoint: iter={it['iter_num']}, loss train="
                                   f"{it['train_loss']:.4f} val={it['val_loss']:.4f} "
                                   f"eval->{it['eval_loss']:.4f}")
        else:
            self.log(LogFlag.INIT, f"Initializing model from {kind}")
            if config.dataset.class_name not in (None, 'gpt2'):
                raise GPTBenchError(f"GPT-2 weights read GPT-2 BPE tokens; dataset.class_name="
                                    f"{config.dataset.class_name!r} is character-level: use "
                                    f"class_name='gpt2'")
            if config.dataset.class_name is not None:
                self._prepare_data(saved=None)
            self._build_pretrained(kind)
            self._source, self._init_from = None, kind
            self.state = self._empty_state()
            self.last_saved_state = dict(self.state)
        if self.train_dataset is not None or config.dataset.train_path:
            d = config.dataset
            self.log(LogFlag.INIT, f"Dataset train_path: {d.train_path}, val_path: {d.val_path}, "
                                   f"train_split: {d.train_split}, vocab_size: "
                                   f"{self.tokenizer.vocab_size}")
        self.log(LogFlag.INIT, f"Model params: {self.model.get_num_params() / 1e6:.2f}M")
        start = config.sample.start_text
        if start is not None and not self._encodable(start.replace('\\n', '\n')):
            self.log(LogFlag.INIT, "Config sample.start_text is not valid for the dataset's "
                                   "vocabulary: set to None (a random start)")
            config.sample.start_text = None

    def _data_folder(self):
        return os.path.join(self.path, 'data')

    def _prepare_data(self, saved):
        """Prepare the dataset folder; load() keeps the saved one when its settings are the
        same (or none are given)."""
        folder = self._data_folder()
        info = data.read_info(folder)
        keep = saved is not None and info is not None and \
            (self.config.dataset.class_name is None or
             info['settings'] == data.dataset_settings(self.config))
        if saved is not None and info is None and self.config.dataset.class_name is None:
            return  # a checkpoint saved without a dataset (GPT-2 weights): its own vocabulary
        if not keep:
            if self.config.dataset.class_name is None:
                raise GPTBenchError("no dataset: call set_datasets(class_name=..., "
                                    "train_path=...) first, or set cfg.dataset")
            info = data.prepare(folder, self.config, self.seed)
        self._data_info = info
        self.meta = load_meta(folder)
        self.tokenizer = Tokenizer.from_meta(self.meta)

    def _load_datasets(self, block_size):
        data.check_fits(self._data_folder(), block_size, self.config.dataset.train_path)
        self.train_dataset, self.val_dataset = data.load_samples(
            self._data_folder(), self._data_info['no_val'], block_size)

    def _build_new(self):
        m = self.config.model
        missing = [k for k in ('n_layer', 'n_head', 'n_embd', 'block_size') if m[k] is None]
        if missing:
            raise GPTBenchError(f"model.{missing[0]} is not set (GPTBench has no default for "
                                f"it): cfg.model.set(n_layer=..., n_head=..., n_embd=..., "
                                f"block_size=...)")
        m.vocab_size = self.tokenizer.vocab_size
        self._load_datasets(m.block_size)
        try:
            config = GPTConfig(**self._model_args())
        except ValueError as e:
            raise GPTBenchError(f"model settings: {e}") from None
        self.model = GPT(config).to(self.device).eval()

    def _model_args(self):
        m = self.config.model
        # GPTBench's model is minGPT's: biases in every Linear and LayerNorm
        return dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                    vocab_size=m.vocab_size, dropout=m.dropout, bias=True)

    def _build_pretrained(self, source):
        if source in GPT2_NAMES and not _in_hf_cache(source) and not hub_reachable():
            raise GPTBenchError(f"GPT-2 weights {source!r} are not in the local Hugging Face "
                                f"cache and the hub can't be reached (offline?); pass a local "
                                f"Hugging Face GPT-2 folder instead: init_pretrained("
                                f"'/path/to/folder', cfg) (it holds config.json and "
                                f"model.safetensors), or -init=/path/to/folder")
        try:
            model, _, _ = load_model(GPT, source, device=self.device)
        except (OSError, ValueError, RuntimeError) as e:
            raise GPTBenchError(str(e).strip().splitlines()[0]) from None
        m = self.config.model
        if m.block_size is not None and m.block_size < model.config.block_size:
            model.crop_block_size(m.block_size)
        c = model.config
        m.set(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
              vocab_size=c.vocab_size)
        if self.meta is None:
            try:
                self.tokenizer = Tokenizer.tiktoken('gpt2')
            except (ValueError, RuntimeError) as e:
                raise GPTBenchError(str(e)) from None
        else:
            self._load_datasets(c.block_size)
        self.model = model.eval()

    def _load_file(self, file_name):
        """self.model from a checkpoint of the run folder; the state from log.csv."""
        path = os.path.join(self.path, file_name)
        try:
            self.model, meta, train_config = load_model(GPT, 'resume', self.path, file_name,
                                                        self.device)
        except CheckpointError as e:
            raise GPTBenchError(str(e)) from None
        if self.tokenizer is None:  # no dataset: the checkpoint's vocabulary (None: GPT-2's)
            self.meta, self.tokenizer = meta, Tokenizer.from_meta(meta)
        elif difference := vocabulary_difference(meta, self.meta, ("the checkpoint", "the dataset")):
            raise GPTBenchError(f"{path} was trained on another vocabulary than "
                                f"{self.config.dataset.train_path!r} ({difference}); load it with "
                                f"its own dataset settings, or init_new() a model for this one")
        c = self.model.config
        self.config.model.set(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                              block_size=c.block_size, vocab_size=c.vocab_size)
        if self._data_info is not None:
            self._load_datasets(c.block_size)
        peek = peek_checkpoint(path)
        self.state = self._state_at(peek['iter_num'], train_config or {})
        self._source, self._init_from = path, f'resume:{file_name}'

    def _state_at(self, iter_num, train_config):
        """GPTBench's state at iteration iter_num: the losses of the last evaluation up to it."""
        state = self._empty_state()
        rows_per_iter = train_config.get('batch_size', 0) * \
            train_config.get('gradient_accumulation_steps', 1)
        state.update(iter_num=iter_num, n_samples=iter_num * rows_per_iter)
        log_path = os.path.join(self.path, 'log.csv')
        rows = [r for r in read_log(log_path) if r['kind'] == 'eval' and r['iter'] <= iter_num] \
            if os.path.isfile(log_path) else []
        if rows:
            train_loss, val_loss = rows[-1]['train_loss'], rows[-1]['val_loss']
            if self._data_info and self._data_info['no_val']:
                val_loss = float('inf')  # val.bin is train.bin: there is no validation set
            state.update(train_loss=train_loss, val_loss=val_loss,
                         eval_loss=self._eval_loss(train_loss, val_loss))
        return state

    def _eval_loss(self, train_loss, val_loss):
        """GPTBench's eval loss: train (eval_type 0) to validation (1), train if there is none."""
        w = self.config.train.eval_type
        if val_loss == float('inf'):
            return train_loss
        return (1 - w) * train_loss + w * val_loss

    def _read_settings(self):
        path = os.path.join(self.path, SETTINGS_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding='utf-8') as f:
            return json.load(f)

    def _write_settings(self, folder=None):
        folder = folder or self.path
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, SETTINGS_FILE), 'w', encoding='utf-8') as f:
            json.dump({'config': self.config.to_dict(), 'seed': self.seed}, f, indent=1)

    # ------------------------------------------------------------------ sampling
    def _need_model(self):
        if self.model is None:
            raise GPTBenchError("no model yet: call init_new(cfg), init_pretrained('gpt2', cfg) "
                                "or load() first")

    def _encodable(self, text):
        try:
            encode_prompt(self.tokenizer, text)
            return True
        except ValueError:
            return False

    def _sample_config(self, overrides):
        s = self.config.sample.copy()
        s.set(**overrides)
        return s

    def _random_start(self):
        return self.tokenizer.decode([random.randrange(self.tokenizer.vocab_size)])

    def _line_end_id(self):
        lines = (self.meta or {}).get('lines')
        return self.tokenizer.encode(lines['end_of_line'])[0] if lines else None

    def _generate(self, prompts, s, greedy=False, stream=False):
        """The text each prompt continues with, as GPTBench's settings `s` say: up to max_len
        tokens, cut at emit_before, at <|endoftext|> (eot_stop) and, on a line dataset, at the
        end of the line (a line never runs past block_size). Batches of max_batch_size rows
        through the KV cache; stream=True prints the single row as it grows."""
        top_k, top_p = top_filter(s.top, self.tokenizer.vocab_size)
        eot = self.tokenizer.eot_token if s.eot_stop else None
        line_end = self._line_end_id()
        stop_ids = [i for i in (eot, line_end) if i is not None]
        batch = s.max_batch_size or MEASURE_BATCH
        texts = []
        for b in range(0, len(prompts), batch):
            rows = prompts[b:b + batch]
            ids = [encode_prompt(self.tokenizer, p) for p in rows]
            budgets = [s.max_len if line_end is None else
                       max(0, min(s.max_len, self.model.config.block_size - len(i) + 1)) for i in ids]
            samples = [TextSample(p, self.tokenizer, s.emit_before or '', stop_ids) for p in rows]
            eot_seen = [False] * len(rows)
            if max(budgets):
                steps = self.model.generate_stream(ids, max(budgets), 0.0 if greedy else s.temp,
                                                   top_k, top_p)
                try:
                    with self.ctx:
                        for step, tokens in enumerate(steps):
                            for i, token in enumerate(tokens.tolist()):
                                if samples[i].done:
                                    continue
                                eot_seen[i] = token == eot
                                samples[i].add(token)
                                if step + 1 >= budgets[i]:
                                    samples[i].finish()
                            if stream:
                                print(samples[0].ready_text(), end='', flush=True)
                            if all(x.done for x in samples):
                                break
                finally:
                    steps.close()
            for i, sample in enumerate(samples):
                sample.finish()
                shown_eot = EOT_TEXT if eot_seen[i] and s.eot_stop == 1 else ''
                if stream:
                    print(sample.ready_text() + shown_eot, end='', flush=True)
                texts.append(sample.text + shown_eot)
        return texts

    def sample(self, start_text=None, dest='print', **over_sample_config):
        """Generate from start_text (None: a random vocabulary item; several split by
        sample.start_text_sep) and print it, or append the texts to `dest` if it is a list.
        Keyword arguments override sample settings for this call (max_len=50, top=1, ...)."""
        self._need_model()
        self._sample(start_text, dest, self._sample_config(over_sample_config))

    def _sample(self, start_text, dest, s):
        start_text = start_text if start_text is not None else s.start_text
        if isinstance(start_text, list):
            prompts = list(start_text)
        elif start_text is not None and s.start_text_sep and s.start_text_sep in start_text:
            prompts = start_text.split(s.start_text_sep)
        else:
            prompts = [start_text] * s.count
        for i, p in enumerate(prompts):
            if p is None:
                prompts[i] = self._random_start()
                continue
            prompts[i] = p.replace('\\n', '\n')
            if not self._encodable(prompts[i]):
                prompts[i] = self._random_start()
                self.log(LogFlag.SAMPLE, f"Text {p!r} has characters the dataset does not have: "
                                         f"using a random {prompts[i]!r} instead")
        shown_start = s.emit_start and s.emit_after is None
        stream = dest == 'print' and s.flush and len(prompts) == 1 and s.emit_after is None
        if stream:
            print(prompts[0] if shown_start else '', end='', flush=True)
        try:
            texts = self._generate(prompts, s, stream=stream)
        finally:
            if stream:
                print()
        out = []
        for prompt, text in zip(prompts, texts):
            whole = prompt + text
            if s.emit_after is not None:
                at = whole.find(s.emit_after)
                out.append(whole[at + len(s.emit_after):] if at >= 0 else '')
            else:
                out.append(whole if s.emit_start else text)
        if isinstance(dest, list):
            dest.extend(out)
        elif not stream:
            print(('\n' + '-' * 40 + '\n').join(out))

    def measure_accuracy(self, questions, answers, test_fn=None, log_list=None, log_cond=None,
                         **over_sample_config):
        """The mean score of the greedy answers to `questions`, generated in batches through
        the KV cache. test_fn(question, answer, generated) gives a score (default: 1.0 when
        generated == answer, else 0.0). log_list, if given, collects (question, answer,
        generated) tuples: log_cond None the ones that scored below 1, >= 0 those scoring at
        least log_cond (0: all), < 0 those scoring at most -log_cond."""
        self._need_model()
        questions = list(questions)
        if answers is not None and len(answers) != len(questions):
            raise GPTBenchError(f"{len(questions)} questions but {len(answers)} answers")
        if not questions:
            raise GPTBenchError("no questions to measure")
        if test_fn is None:
            if answers is None:
                raise GPTBenchError("pass the answers, or a test_fn(question, answer, generated)")

            def test_fn(_question, answer, generated):
                return float(str(answer) == str(generated))
        s = self._sample_config(over_sample_config)
        s.emit_start = False
        generated = self._generate(questions, s, greedy=True)
        scores = []
        for i, (question, gen) in enumerate(zip(questions, generated)):
            if s.emit_after is not None:
                at = (question + gen).find(s.emit_after)
                gen = (question + gen)[at + len(s.emit_after):] if at >= 0 else ''
            answer = None if answers is None else answers[i]
            score = test_fn(question, answer, gen)
            scores.append(score)
            if log_list is not None:
                logged = score < 1 if log_cond is None else \
                    score >= log_cond if log_cond >= 0 else score <= -log_cond
                if logged:
                    log_list.append((question, answer, gen))
        return sum(scores) / len(scores)

    def prompt(self, **over_sample_config):
        """An interactive prompt: type a start text and Enter (multiline_prompt: lines until
        Ctrl+D); -name=value sets a sample setting, -help lists them, -quit leaves; Ctrl+C
        stops a generation."""
        self._need_model()
        s = self._sample_config(over_sample_config)
        commands = ('count', 'max_len', 'flush', 'eot_stop', 'top', 'temp', 'multiline_prompt',
                    'emit_start', 'emit_after', 'emit_before', 'start_text_sep')
        print("Prompt mode: type a start text and press Enter (multiline_prompt: Ctrl+D); "
              "-help for commands, -quit to leave")
        while True:
            try:
                text = _read_prompt(s.multiline_prompt)
            except KeyboardInterrupt:
                print()
                break
            if text is None:
                break
            if not text.strip():
                continue
            if text.startswith('-'):
                name, _, value = text.strip().lstrip('-').partition('=')
                if name == 'quit':
                    break
                if name == 'seed' and value:
                    self.set_seed(int(value))
                elif name == 'config':
                    print(s.dump(2))
                elif name in commands:
                    try:
                        s.update_from_args([f"-{name}={value or '1'}"])
                        print(f"{name}={s[name]}")
                    except GPTBenchError as e:
                        print(f"error: {e}")
                else:
                    print(f"commands: -quit, -help, -config, -seed=N, "
                          f"{', '.join('-' + c + '=...' for c in commands)}")
                continue
            try:
                self._sample(text, 'print', s)
            except KeyboardInterrupt:
                print('\n<stopped>')
            except GPTBenchError as e:
                print(f"error: {e}")


def over_config_has(config, key):
    return config is not None and config.has(key)


def _read_prompt(multiline):
    """One start text from stdin, or None at the end of input."""
    if not multiline:
        try:
            return input('> ')
        except EOFError:
            return None
    lines = []
    print('V (Ctrl+D ends the text)')
    while True:
        try:
            lines.append(input())
        except EOFError:
            return '\n'.join(lines) if lines else None


def _in_hf_cache(name, cache_dir=None):
    """Whether GPT-2 weights `name` are in the local Hugging Face cache (HF_HUB_CACHE, or
    cache_dir) already."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, 'config.json', cache_dir=cache_dir), str)
