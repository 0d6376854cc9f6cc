"""
GPTBench's Train object and config_run: training is train.py itself, run by workbench.train as a
subprocess with --key=value settings that say what GPTBench's settings mean (train_settings).
A second train() continues from last.pt, exactly where the first stopped (train.py's resume).

    ben = Train('add2', seed=0xADD2BEA7)            # then set_datasets, init_new as for Sample
    ben.train(iter_count=3000)                      # train.py --max_iters=3000 --out_dir=... ...
    ben.save(name='add2-copy')
    config_run(cfg, sys.argv)                       # -init=new|resume|gpt2* -mode=train|sample|prompt

GPTBENCH_SMOKE=N in the environment caps every train() at N iterations, train.eval_iters at N
and trainer.batch_size at 16, so a notebook or script runs end to end in seconds (a note says
so; the results mean nothing). The tests run GPTBench's snippets that way.

What it is not: a training loop (train.py is the one).
"""

import datetime
import importlib.util
import math
import os
import re
import shutil
import sys

import workbench
from gptbench.bench import DEFAULT_NAME, DEFAULT_WORK_DIR, Sample, top_filter
from gptbench.config import GPTBenchError, LogFlag, empty_config, train_py_defaults
from smallgpt.checkpoint import peek_checkpoint, save_checkpoint
from smallgpt.hf.common import GPT2_NAMES

SMOKE_ENV = 'GPTBENCH_SMOKE'
NO_LIMIT = 10 ** 9  # train.py needs a number: "until Ctrl+C" (or eval_period=0: no periodic eval)
# train.py settings the run's name, dataset and train(iter_count) decide: train_py can't set them
OWN_SETTINGS = ('out_dir', 'dataset', 'init_from', 'resume_checkpoint_name', 'max_iters')


def period(value, eval_period):
    """A log period: > 0 every that many batches, < 0 that multiple of eval_period, 0 never."""
    if value < 0:
        return max(1, int(eval_period * -value))
    return int(value)


class Train(Sample):
    """A Sample that also trains: train(iter_count=N) runs train.py on the run's folder."""

    def __init__(self, name=DEFAULT_NAME, work_dir=DEFAULT_WORK_DIR, seed=None,
                 log_mask=LogFlag.ALL, log_dot_period=-0.01, log_loss_period=-0.1,
                 log_sample_period=-10.0):
        super().__init__(name, work_dir, seed, log_mask)
        self.set_train_log_periods(log_dot_period, log_loss_period, log_sample_period)

    def set_train_log_periods(self, dot_period=None, loss_period=None, sample_period=None):
        """While training: a dot every dot_period batches, a loss line every loss_period, a
        sample every sample_period (< 0: a multiple of train.eval_period; 0: none)."""
        for key, value in (('log_dot_period', dot_period), ('log_loss_period', loss_period),
                           ('log_sample_period', sample_period)):
            if value is not None:
                self.config[key] = value

    def train(self, iter_count=None):
        """Train iter_count batches (None: up to trainer.max_samples, else until Ctrl+C), in
        train.py. The first call starts from the initialized model; each later call continues
        from where the last one stopped, exactly (train.py's resume from last.pt)."""
        self._need_model()
        if self._data_info is None:
            raise GPTBenchError("no dataset to train on: set_datasets(class_name='gpt2', "
                                "train_path=...) before init_pretrained(), or set cfg.dataset")
        settings, notes = self.train_settings(iter_count)
        for note in notes:
            print(f"note: {note}")
        self._write_settings()
        printer = TrainPrinter(self, settings)
        self.log(LogFlag.INIT, "Training")
        try:
            workbench.train(cwd=os.getcwd(), on_line=printer.line, **settings)
        except RuntimeError as e:
            printer.end()
            raise GPTBenchError(str(e)) from None
        except KeyboardInterrupt:
            printer.end()
            print("training stopped (Ctrl+C)")
        printer.end()
        if os.path.isfile(os.path.join(self.path, 'last.pt')):
            self._load_file('last.pt')
        if os.path.isfile(os.path.join(self.path, 'ckpt.pt')):
            peek = peek_checkpoint(os.path.join(self.path, 'ckpt.pt'))
            self.last_saved_state = self._state_at(peek['iter_num'], peek['config'] or {})

    def train_settings(self, iter_count=None):
        """(train.py's --key=value settings for the next train(), notes on what differs from
        GPTBench)."""
        c, m, t, tr = self.config, self.config.model, self.config.trainer, self.config.train
        train_py = train_py_defaults()
        notes = []
        no_val = self._data_info['no_val'] if self._data_info else True
        if t.optimizer != 'adamw':
            raise GPTBenchError(f"trainer.optimizer={t.optimizer!r} is not supported here: "
                                f"train.py trains with AdamW; use 'adamw'")
        start_iter = self.state['iter_num'] if self._init_from.startswith('resume') else 0
        limits = []
        if iter_count is not None:
            if iter_count < 0:
                raise GPTBenchError(f"train(iter_count={iter_count}): give a count >= 0")
            limits.append(start_iter + iter_count)
        if t.max_samples is not None and self.train_dataset is not None:
            samples = t.max_samples if t.max_samples > 0 else -t.max_samples * len(self.train_dataset)
            limits.append(math.ceil(samples / t.batch_size))
        max_iters = min(limits) if limits else NO_LIMIT
        batch_size, eval_iters = t.batch_size, tr.eval_iters
        smoke = int(os.environ.get(SMOKE_ENV, '0') or 0)
        if smoke > 0:
            max_iters, eval_iters = min(max_iters, start_iter + smoke), min(eval_iters, smoke)
            batch_size = min(batch_size, 16)
            notes.append(f"{SMOKE_ENV}={smoke}: at most {smoke} iterations, batch_size "
                         f"{batch_size}, eval_iters {eval_iters} (a smoke run: the numbers mean nothing)")
        eval_period = tr.eval_period if tr.eval_period > 0 else NO_LIMIT
        if tr.eval_save_checkpt == 0:
            notes.append("train.eval_save_checkpt=0 is run as 1: train.py keeps ckpt.pt at the "
                         "lowest val loss (and last.pt, for train() to continue from)")
        if tr.eval_type != 1 and not no_val:
            notes.append(f"train.eval_type={tr.eval_type}: the eval loss shown mixes train and "
                         f"val as GPTBench does, but train.py keeps ckpt.pt by the val loss")
        outputs = {v.strip() for v in (tr.eval_save_loss or '').split(',') if v.strip()}
        if outputs - {'csv', 'tensorboard', 'plot'}:
            raise GPTBenchError(f"train.eval_save_loss={tr.eval_save_loss!r}: use 'csv', "
                                f"'tensorboard' or both, separated by a comma")
        tensorboard = 'tensorboard' in outputs and importlib.util.find_spec('tensorboard') is not None
        if 'tensorboard' in outputs and not tensorboard:
            notes.append("tensorboard is not installed: only log.csv and loss.png are written "
                         "(pip install tensorboard)")
        periods = [period(c[k], eval_period if tr.eval_period > 0 else 100)
                   for k in ('log_dot_period', 'log_loss_period')]
        active = [p for p in periods if p > 0]
        settings = dict(
            out_dir=os.path.abspath(self.path), dataset=os.path.abspath(self._data_folder()),
            device=m.device, dtype=m.dtype, compile=False, seed=self.seed,
            n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
            dropout=m.dropout, bias=True,
            batch_size=batch_size, gradient_accumulation_steps=1, max_iters=max_iters,
            learning_rate=t.learning_rate, decay_lr=False, warmup_iters=0,  # constant, as GPTBench
            weight_decay=t.adamw_weight_decay, beta1=t.adamw_beta1, beta2=t.adamw_beta2,
            grad_clip=t.grad_norm_clip,
            eval_interval=eval_period, eval_iters=eval_iters, checkpoint_interval=0,
            always_save_checkpoint=tr.eval_save_checkpt == 2, tensorboard_log=tensorboard,
            log_interval=math.gcd(*active) if active else eval_period)
        if self._init_from == 'scratch':
            settings['init_from'] = 'scratch'
        elif self._init_from.startswith('resume:'):
            settings.update(init_from='resume', resume_checkpoint_name=self._init_from[7:])
        else:
            settings['init_from'] = os.path.abspath(self._init_from) \
                if os.path.isdir(self._init_from) else self._init_from
        sample_every = period(c.log_sample_period, eval_period if tr.eval_period > 0 else 100)
        if sample_every:  # train.py's sample_interval prints them (and keeps them in samples.txt)
            s = c.sample
            top_k, top_p = top_filter(s.top, self.tokenizer.vocab_size)
            greedy = top_k == 1 or s.temp == 0
            if not greedy and (top_k or top_p):
                notes.append("samples while training use sample.temp alone: train.py's "
                             "sample_interval has no top-k/top-p filter")
            start = s.start_text or ''  # '': train.py picks one (docs/gptbench.md)
            if s.start_text_sep and s.start_text_sep in start:
                start = start.split(s.start_text_sep)[0]
                notes.append(f"samples while training start from one text: {start!r}, the "
                             f"first of sample.start_text")
            settings.update(sample_interval=sample_every, sample_start=start,
                            sample_max_new_tokens=s.max_len,
                            sample_temperature=0.0 if greedy else s.temp)
        for key, value in c.train_py.to_dict().items():
            key = key.removeprefix('train_py.')
            if key in OWN_SETTINGS:
                raise GPTBenchError(f"train_py.{key} is decided by the run (its name, dataset "
                                    f"and train(iter_count)); leave it out")
            settings[key] = value
        unknown = [k for k in settings if k not in train_py]
        assert not unknown, f"settings train.py does not have: {unknown}"
        return settings, notes

    def save(self, name=None):
        """Save the current model as the checkpoint of `name` (this run's name by default):
        what load(name=...) reads back, and train() continues from."""
        self._need_model()
        target = os.path.join(self.work_dir, name) if name else self.path
        os.makedirs(target, exist_ok=True)
        same = os.path.abspath(target) == os.path.abspath(self.path)
        if self._source is not None:
            for file_name in ('ckpt.pt', 'last.pt'):
                destination = os.path.join(target, file_name)
                if os.path.abspath(destination) != os.path.abspath(self._source):
                    shutil.copyfile(self._source, destination)
        else:
            settings, _ = self.train_settings(0)
            optimizer = self.model.configure_optimizers(
                settings['weight_decay'], settings['learning_rate'],
                (settings['beta1'], settings['beta2']), 'cpu', fused=False)
            for file_name in ('ckpt.pt', 'last.pt'):
                save_checkpoint({'model': self.model.state_dict(),
                                 'optimizer': optimizer.state_dict(), 'scaler': None,
                                 'model_args': self.model.config.to_model_args(),
                                 'iter_num': self.state['iter_num'],
                                 'best_val_loss': float('inf'), 'config': settings,
                                 'meta': self.meta}, os.path.join(target, file_name))
        if not same:
            for item in ('data', 'log.csv'):
                source = os.path.join(self.path, item)
                if os.path.isdir(source):
                    shutil.copytree(source, os.path.join(target, item), dirs_exist_ok=True)
                elif os.path.isfile(source):
                    shutil.copyfile(source, os.path.join(target, item))
            self.set_name(name)
        self._write_settings()
        self._source = os.path.join(self.path, 'last.pt')
        self._init_from = 'resume:last.pt'
        self.last_saved_state = dict(self.state)
        self.log(LogFlag.INIT, f"Saved {self.name} to {self.path}")


class TrainPrinter:
    """train.py's output the way GPTBench shows training: a dot per batch, loss lines, eval
    lines with the eval loss, '==> Saving model' and the samples; the rest is dropped."""

    QUIET = ('Overriding', 'device ', 'tokens per iteration', 'measured ', 'compiling',
             'resuming from', 'initializing from', 'init_from=', '  python ', '  torchrun ')

    def __init__(self, bench, settings):
        self.bench = bench
        c = bench.config
        eval_period = c.train.eval_period if c.train.eval_period > 0 else 100
        self.dot_period = period(c.log_dot_period, eval_period)
        self.loss_period = period(c.log_loss_period, eval_period)
        self.batch_size = settings['batch_size']
        self.n_train = max(1, len(bench.train_dataset))
        self.no_val = bench._data_info['no_val']
        self.in_dots = False
        self.eval_loss = float('inf')

    def show(self, flag, text):
        if self.bench.log_mask & flag:
            if self.in_dots:
                print()
                self.in_dots = False
            print(text, flush=True)

    def line(self, text):
        if m := re.match(r'iter (\d+): loss (\S+), time ([\d.]+)ms', text):
            it, loss = int(m[1]), float(m[2].rstrip(','))
            if self.dot_period and it % self.dot_period == 0 and self.bench.log_mask & LogFlag.TRAIN_ITER:
                print('.', end='', flush=True)
                self.in_dots = True
            if self.loss_period and it % self.loss_period == 0:
                self.show(LogFlag.TRAIN_ITER, f"Iter {it} loss={loss:.4f}, iter_dt={m[3]}ms")
        elif m := re.match(r'step (\d+): train loss (\S+), val loss ([^,\s]+)', text):
            it, train_loss, val_loss = int(m[1]), float(m[2].rstrip(',')), float(m[3])
            if self.no_val:
                val_loss = float('inf')
            self.eval_loss = self.bench._eval_loss(train_loss, val_loss)
            epoch = it * self.batch_size / self.n_train
            self.show(LogFlag.TRAIN_EVAL, f"Iter {it} ({epoch:.3f} epoch): loss train="
                                          f"{train_loss:.4f}, val={val_loss:.4f}, "
                                          f"eval->{self.eval_loss:.4f}")
        elif m := re.match(r'saved (.*) \(iteration (\d+)\)', text):
            if os.path.basename(m[1]) == 'ckpt.pt':
                self.show(LogFlag.TRAIN_EVAL, f"==> Saving model at iter={m[2]}, "
                                              f"eval loss->{self.eval_loss:.4f}")
        elif m := re.match(r'sample at iteration \d+: (.*)', text):
            self.show(LogFlag.TRAIN_EVAL, m[1])  # GPTBench shows the sample alone
        elif m := re.match(r'stopped at iteration (\d+)', text):
            self.show(LogFlag.TRAIN_EVAL, f"stopped at iter {m[1]}: train() again continues "
                                          f"from there")
        elif text.strip() and not text.startswith(self.QUIET):
            self.show(LogFlag.TRAIN_EVAL, text)  # samples, notes

    def end(self):
        if self.in_dots:
            print()
            self.in_dots = False


# ----------------------------------------------------------------------------- command line
def config_run(config, sys_argv=None):
    """Run what config (updated with sys_argv's -key=value arguments) says: -init=new|resume|
    gpt2*, -mode=train|sample|prompt, -name=NAME (default 'model'). Returns the Sample or
    Train. A mistake is one line on stderr and exit code 2; -help (-h, --help) lists the
    settings."""
    if sys_argv is not None and any(a in ('-h', '-help', '--help') for a in sys_argv[1:]):
        print("usage: python -m gptbench.run -init=new|resume|gpt2|FOLDER -mode=train|sample|prompt "
              "[-name=NAME] [-section.key=value ...]\n\nThe settings, their defaults and types:")
        (config or empty_config()).help()
        sys.exit(0)
    try:
        return _config_run(config, sys_argv)
    except GPTBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _config_run(config, sys_argv):
    config = config.copy() if config is not None else empty_config()
    if sys_argv is not None:
        config.update_from_args(list(sys_argv[1:]))
    init, mode = config.init, config.mode
    if init is None or mode is None:
        raise GPTBenchError("give -init=new|resume|gpt2 (or gpt2-medium, gpt2-large, gpt2-xl, a "
                            "local GPT-2 folder) and -mode=train|sample|prompt")
    if mode not in ('train', 'sample', 'prompt'):
        raise GPTBenchError(f"-mode={mode}: use train, sample or prompt")
    if init not in ('new', 'resume') + GPT2_NAMES and not os.path.isdir(init):
        raise GPTBenchError(f"-init={init}: use new, resume, {', '.join(GPT2_NAMES)} or a local "
                            f"Hugging Face GPT-2 folder")
    name = config.name or DEFAULT_NAME
    kwargs = dict(work_dir=config.work_dir, log_mask=config.log_mask)
    if mode == 'train':
        bench = Train(name, log_dot_period=config.log_dot_period,
                      log_loss_period=config.log_loss_period,
                      log_sample_period=config.log_sample_period, **kwargs)
    else:
        bench = Sample(name, **kwargs)
    if init == 'new':
        bench.init_new(config)
    elif init == 'resume':
        bench.load(config)
    else:
        bench.init_pretrained(init, config)
    if sys_argv is not None:  # the command lines of a run, as GPTBench keeps them
        os.makedirs(bench.path, exist_ok=True)
        stamp = datetime.datetime.now().strftime('%Y/%m/%d %H:%M:%S')
        with open(os.path.join(bench.path, 'run.log'), 'w' if init != 'resume' else 'a',
                  encoding='utf-8') as f:
            f.write(f"{stamp}:\n{' '.join(sys_argv)}\n\n")
    if mode == 'train':
        bench.train()
    elif mode == 'sample':
        bench.sample(config.sample.start_text)
    else:
        bench.prompt()
    return bench
