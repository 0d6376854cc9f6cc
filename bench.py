"""
Benchmarks: training-step speed (ms/iter, tokens/s, FLOP/s, MFU), two settings side by side,
a profiler view, generation speed with and without the KV cache, and the KV cache report:
trained runs' val loss through compressed caches against the bits they keep (--mode=kv).

    python bench.py                                          # train_don_char.py's shape, random data
    python bench.py config/train_shakespeare_char.py config/cpu_small.py --dataset=shakespeare_char
    python bench.py --compare="--dtype=float32 --fast_cpu=False"  # ours vs nanoGPT's CPU path
    python bench.py --profile=True                           # where the time of a step goes
    python bench.py --mode=generate                          # tokens/s: KV cache vs recompute
    python bench.py --mode=generate --pos_emb=rope           # ... vs transformers' generate too
    python bench.py --n_kv_head=2 --attn_window=64 --window_pattern=SSSL  # any attention variant
    python bench.py --mode=generate --checkpoint=out-don-small-char/ckpt.pt  # a trained model
    python bench.py --quick=True                             # a tiny smoke run
    python bench.py --mode=kv --out_dir=out-rope --out_dir=out-gqa  # compressed KV caches: loss vs bits

Timings on a shared machine are noisy: the comparison alternates A and B (A B A B ...) and
reports medians, so drift hits both sides alike.
"""

import statistics
import sys
import time

import torch

# -----------------------------------------------------------------------------
# defaults (config/train_don_char.py's model shape; a config file or --key=value overrides)
mode = 'train'  # train (time optimizer steps), generate (time sampling) or kv (KV cache report)
dataset = ''  # '' = random tokens; else a prepared data/<dataset> (its vocabulary is used)
vocab_size = 65  # with random tokens only
batch_size = 64
block_size = 256
gradient_accumulation_steps = 1
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = False
pos_emb = 'learned'  # attention variants, as in train.py (README: Attention variants)
rope_theta = 10000.0
n_kv_head = 0
attn_window = 0
window_pattern = ''
kv_share = 1
attention = 'softmax'  # or 'linear' (README: Memory beyond the window)
learning_rate = 1e-3
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0
device = 'auto'  # auto (cuda > mps > cpu), cpu, cuda, mps
dtype = 'auto'  # auto, float32, bfloat16, float16
compile = False  # torch.compile the model
fast_cpu = True  # train.py's CPU speed-ups; False = nanoGPT's CPU path (memory reuse: A's)
seed = 1337
warmup_iters = 2  # untimed steps first (kernel selection, compilation, allocator)
num_iters = 5  # timed steps per round
rounds = 1  # with compare: A B A B ... this many times
compare = ''  # other settings to time against these, e.g. "--dtype=float32 --compile=False"
peak_flops = 0.0  # FLOP/s that MFU is relative to; 0 = measure a matmul in the run's dtype
profile = False  # run torch.profiler over a few steps and print the top operators
max_new_tokens = 1000  # generate mode: tokens per sample (one sample, one-token prompt)
window_chunk = 64  # generate mode, learned positions: also time this approximate setting
hf_generate = True  # generate mode: also time transformers' generate on the exported model
weights_dtypes = 'int8'  # generate mode: weight formats to time against float32 (int8, bfloat16; '' = none)
checkpoint = ''  # a train.py checkpoint (.pt) to time instead of random weights of the shape above
quick = False  # tiny shapes and few steps: checks that everything runs
out_dir = ''  # kv mode: a train.py run to report; repeat --out_dir=... for several
kv_sequences = 4  # kv mode: val sequences, fed one token at a time through the cache (a batch)
kv_length = 0  # kv mode: tokens per sequence (0 = 4 x block_size; learned positions crop past it)
kv_budgets = '16,32'  # kv mode: kv_budget rows (tokens per layer), comma-separated
kv_sinks = '4'  # kv mode: kv_sink rows (rope/none models), comma-separated
kv_windows = '16,32'  # kv mode: context_window rows, comma-separated
report_dir = ''  # kv mode: where kv_frontier.png goes ('' = the first out_dir)
# -----------------------------------------------------------------------------
# keys that train.py's config files set and a benchmark has no use for
TRAIN_ONLY = ['eval_interval', 'log_interval', 'eval_iters', 'eval_only',
              'always_save_checkpoint', 'checkpoint_interval', 'init_from',
              'resume_checkpoint_name', 'wandb_log', 'wandb_project', 'wandb_run_name',
              'tensorboard_log', 'max_iters', 'decay_lr', 'lr_decay_iters', 'min_lr', 'backend',
              'data_order', 'xl_memory', 'parallel']
from configurator import coerce, configure, parse_value  # noqa: E402

config = configure(globals(), ignore=TRAIN_ONLY)
# configure keeps the last of a repeated key; kv mode reports every --out_dir given
out_dirs = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--out_dir=')] or \
    ([out_dir] if out_dir else [])

import os  # noqa: E402

from smallgpt.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from smallgpt.kvcache import KVCache  # noqa: E402
from model import GPT, GPTConfig, VARIANT_KEYS, set_fast_cpu  # noqa: E402
from smallgpt.device import (autocast_context, device_type_of, measure_peak_flops, pick_device, pick_dtype, reuse_freed_memory, sync)  # noqa: E402
from smallgpt.dataloader import count_tokens, load_meta, sample_batch  # noqa: E402

REPO = os.path.dirname(os.path.abspath(__file__))
MODEL_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias') + VARIANT_KEYS

if quick:
    config.update(batch_size=4, block_size=32, n_layer=2, n_head=2, n_embd=32, warmup_iters=1,
                  num_iters=2, max_new_tokens=40, window_chunk=8)


def parse_overrides(text, base):
    """'--dtype=float32 --compile=False' -> settings: base with those keys replaced."""
    settings = dict(base)
    for arg in text.split():
        key, sep, raw = arg.lstrip('-').partition('=')
        if not sep or key not in base:
            sys.exit(f"error: --compare takes --key=value settings of bench.py, got {arg!r}")
        try:
            settings[key] = coerce(key, parse_value(raw, base[key]), base[key])
        except ValueError as e:
            sys.exit(f"error: --compare {arg}: {e}")
    return settings


class Runner:
    """One benchmark setting: its model, optimizer and data, ready to time steps."""

    def __init__(self, s, label):
        self.s, self.label = s, label
        try:
            self.device = pick_device(s['device'])
            self.device_type = device_type_of(self.device)
            self.dtype = pick_dtype(s['dtype'], self.device_type, quiet=True,
                                    training=s['mode'] == 'train')
        except ValueError as e:
            sys.exit(f"error: {e}")
        self.ctx = autocast_context(self.device_type, self.dtype)
        torch.manual_seed(s['seed'])
        self.generator = torch.Generator().manual_seed(s['seed'])
        self.meta, self.bin_path = None, None
        if s['dataset']:
            data_dir = os.path.join(REPO, 'data', s['dataset'])
            self.bin_path = os.path.join(data_dir, 'train.bin')
            if not os.path.isfile(self.bin_path):
                sys.exit(f"error: no {self.bin_path}; run: python data/{s['dataset']}/prepare.py")
            try:
                self.meta = load_meta(data_dir)
                n_tokens = count_tokens(self.bin_path, self.meta['dtype'] if self.meta else 'uint16')
            except ValueError as e:
                sys.exit(f"error: {e}: python data/{s['dataset']}/prepare.py")
            if n_tokens <= s['block_size']:
                sys.exit(f"error: {self.bin_path} has {n_tokens} tokens, not more than "
                         f"block_size={s['block_size']}; use a smaller --block_size")
        vocab = self.meta['vocab_size'] if self.meta else s['vocab_size']
        if s['checkpoint']:  # its model_args decide the shape and the variant
            try:
                model = GPT.from_checkpoint(load_checkpoint(s['checkpoint'], 'cpu'),
                                              dropout=s['dropout'], path=s['checkpoint'])
            except CheckpointError as e:
                sys.exit(f"error: {e}")
            s.update({k: getattr(model.config, k) for k in MODEL_KEYS})
        else:
            try:
                model = GPT(GPTConfig(n_layer=s['n_layer'], n_head=s['n_head'], n_embd=s['n_embd'],
                                      block_size=s['block_size'], vocab_size=vocab,
                                      dropout=s['dropout'], bias=s['bias'],
                                      **{k: s[k] for k in VARIANT_KEYS}))
            except ValueError as e:
                sys.exit(f"error: {e}")
        self.raw_model = model.to(self.device)
        set_fast_cpu(self.raw_model, s['fast_cpu'])
        self.model = torch.compile(self.raw_model) if s['compile'] else self.raw_model
        self.optimizer = self.raw_model.configure_optimizers(
            s['weight_decay'], s['learning_rate'], (s['beta1'], s['beta2']), self.device_type,
            fused=s['fast_cpu'] or self.device_type != 'cpu')
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=(self.dtype == 'float16'))
        self.tokens_per_iter = s['batch_size'] * s['block_size'] * s['gradient_accumulation_steps']
        self.flops_per_iter = self.raw_model.flops_per_token() * self.tokens_per_iter
        self.times = []

    def batch(self):
        s = self.s
        if self.bin_path:
            x, y = sample_batch(self.bin_path, self.meta['dtype'] if self.meta else 'uint16',
                                s['batch_size'], s['block_size'], self.generator)
        else:
            x = torch.randint(self.raw_model.config.vocab_size, (s['batch_size'], s['block_size']),
                              generator=self.generator)
            y = torch.roll(x, -1, dims=1)
        return x.to(self.device), y.to(self.device)

    def step(self):
        for _ in range(self.s['gradient_accumulation_steps']):
            x, y = self.batch()
            with self.ctx:
                _, loss = self.model(x, y)
            self.scaler.scale(loss / self.s['gradient_accumulation_steps']).backward()
        if self.s['grad_clip']:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.s['grad_clip'])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def time_steps(self, n):
        for _ in range(n):
            t0 = time.perf_counter()
            loss = self.step()
            loss.item()  # waits for the device, like train.py at each log line
            sync(self.device_type)
            self.times.append(time.perf_counter() - t0)

    def report(self, peak):
        ms = statistics.median(self.times) * 1000
        flops = self.flops_per_iter / (ms / 1000)
        print(f"{self.label}: {ms:.2f} ms/iter (median of {len(self.times)}), "
              f"{self.tokens_per_iter / (ms / 1000):,.0f} tokens/s, {flops / 1e9:,.1f} GFLOP/s, "
              f"MFU {flops / peak * 100:.1f}% of {peak / 1e9:,.0f} GFLOP/s ({self.dtype} peak)")
        return ms


def describe(s, r):
    cfg = r.raw_model.config
    variant = ', '.join(f"{k}={s[k]!r}" for k in VARIANT_KEYS if s[k] != getattr(GPTConfig, k))
    return (f"{s['n_layer']} layers, {s['n_head']} heads, {s['n_embd']} wide, block "
            f"{s['block_size']}, batch {s['batch_size']}x{s['gradient_accumulation_steps']}, "
            f"dropout {s['dropout']}, {r.device} {r.dtype}, compile {s['compile']}, "
            f"{r.raw_model.get_num_params() / 1e6:.2f}M params, "
            f"{'data ' + s['dataset'] if s['dataset'] else 'random tokens'}"
            f"{'; ' + variant if variant else ''}; KV cache {kv_bytes_per_token(cfg, r.dtype)}")


def kv_bytes_per_token(cfg, dtype):
    """What one sequence's full KV cache (block_size tokens of context) holds, per token."""
    itemsize = getattr(torch, dtype).itemsize  # the cache holds what autocast computes
    if cfg.attention == 'linear':  # no KV cache: a fixed state per layer, whatever the length
        from smallgpt.kvcache import LinearState
        return f"none: linear attention's state {LinearState.for_model(cfg, 1).nbytes():,} bytes"
    slots = sum(KVCache.for_model(cfg, 1, cfg.block_size).capacities)
    total = slots * 2 * cfg.kv_heads * (cfg.n_embd // cfg.n_head) * itemsize  # keys and values
    return f"{total / cfg.block_size:,.0f} bytes/token ({total / 1024:,.0f} KiB at block_size)"


def peak_for(runner):
    return config['peak_flops'] or measure_peak_flops(runner.device, runner.dtype)


def bench_train():
    runners = [Runner(config, 'A' if compare else 'result')]
    if compare:
        runners.append(Runner(parse_overrides(compare, config), 'B'))
        if runners[0].device_type == 'cpu' and runners[1].s['fast_cpu'] != fast_cpu:
            print(f"note: memory reuse is process-wide, so B runs with A's (fast_cpu={fast_cpu}); "
                  f"time whole train.py runs to include it")
    for r in runners:
        print(f"{r.label}: {describe(r.s, r)}")
        r.time_steps(config['warmup_iters'])
        r.times.clear()
    for _ in range(config['rounds'] if compare else 1):
        for r in runners:
            r.time_steps(config['num_iters'])
    medians = [r.report(peak_for(r)) for r in runners]
    if compare:
        print(f"B/A time ratio {medians[1] / medians[0]:.2f}: A is {medians[1] / medians[0]:.2f}x "
              f"as fast as B ({compare})")
    if config['profile']:
        profile_steps(runners[0])


def profile_steps(runner, steps=3):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if runner.device_type == 'cuda' else [])
    with torch_profile(activities=activities) as prof:
        runner.time_steps(steps)
    sort_by = 'self_cuda_time_total' if runner.device_type == 'cuda' else 'self_cpu_time_total'
    print(prof.key_averages().table(sort_by=sort_by, row_limit=20))
    trace = 'bench_trace.json'
    prof.export_chrome_trace(trace)
    print(f"wrote {trace} (open it in chrome://tracing or https://ui.perfetto.dev)")


def bench_generate():
    """Tokens/s of one greedy sample from a one-token prompt: our KV cache against nanoGPT's
    loop (a forward over the last block_size tokens per new token) and, inside block_size,
    transformers' generate on the same weights exported; the tokens are checked too."""
    r = Runner(config, 'generate')
    model = r.raw_model.eval()
    cfg, n = model.config, config['max_new_tokens']
    inside = min(n, cfg.block_size - 1)  # new tokens that fit in the context with the prompt
    print(f"generate: {describe(config, r)}; {n} new tokens, one sample")
    prompt = torch.zeros((1, 1), dtype=torch.long, device=r.device)
    runs = {'recompute (nanoGPT)': (n, lambda k: recompute_greedy(model, prompt, k)),
            'KV cache': (n, lambda k: model.generate(prompt, k, temperature=0))}
    if cfg.pos_emb == 'learned' and n > inside:
        chunk = min(config['window_chunk'], cfg.block_size)
        runs[f"KV cache, window_chunk={chunk}"] = (n, lambda k: model.generate(
            prompt, k, temperature=0, window_chunk=chunk))
    hf = exported_to_transformers(model) if config['hf_generate'] else None
    if hf is not None:
        runs['KV cache, inside block_size'] = (inside, runs['KV cache'][1])
        # an explicit mask: transformers would otherwise take the prompt's token 0 for padding
        runs["transformers generate, inside block_size"] = (inside, lambda k: hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, min_new_tokens=k,
            max_new_tokens=k, pad_token_id=0))
    times, outputs = {name: [] for name in runs}, {}
    with r.ctx:
        for name, (k, run) in runs.items():
            run(min(8, k))  # warm-up
        for _ in range(config['rounds']):  # A B A B ...: drift hits every setting alike
            for name, (k, run) in runs.items():
                t0 = time.perf_counter()
                outputs[name] = run(k)
                sync(r.device_type)
                times[name].append(time.perf_counter() - t0)
    tps = {name: runs[name][0] / statistics.median(t) for name, t in times.items()}
    for name, value in tps.items():
        print(f"{name:>40}: {value:8.1f} tokens/s  ({value / tps['recompute (nanoGPT)']:.1f}x "
              f"recompute, {runs[name][0]} tokens)")
    if hf is not None:
        ratio = tps['KV cache, inside block_size'] / tps['transformers generate, inside block_size']
        same = torch.equal(outputs['KV cache, inside block_size'].cpu(),
                           outputs['transformers generate, inside block_size'].cpu())
        print(f"KV cache / transformers generate: {ratio:.2f}x; greedy tokens identical: {same}")
    check_against_reference(model, outputs['KV cache'])
    if config['weights_dtypes']:
        bench_weights(r, model, prompt, inside, tps.get('transformers generate, inside block_size'))
    past = max(0, n + 1 - cfg.block_size)
    if past and cfg.pos_emb == 'learned':
        print(f"({past} of the tokens are past block_size={cfg.block_size}: exact cropping costs a "
              f"full-window forward each; window_chunk trades exactness for speed there)")


def copy_bandwidth(nbytes=256 * 2 ** 20, rounds=5):
    """Bytes/s of the best of `rounds` copies of a buffer too big for any cache, counting what is
    read and what is written: the memory bandwidth a decoding step can at best reach here."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(rounds))
    return 2 * nbytes / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_weights(r, model, prompt, n, hf_tps):
    """weights_dtype rows: the same greedy decoding with the weights in int8 / bf16, timed
    A B A B against float32, with the bytes a step streams, the bandwidth that reaches (against
    a plain copy's), top-1 agreement with float32 along float32's own greedy tokens, and the
    change in next-token loss through the cache (teacher-forced on val data, or on those tokens
    when the run has no dataset)."""
    import copy

    import numpy as np

    from smallgpt.generate import teacher_forced
    from smallgpt.quantize import quantize_weights, weights_nbytes
    formats = ['float32'] + [f.strip() for f in config['weights_dtypes'].split(',') if f.strip()]
    try:
        models = {f: quantize_weights(copy.deepcopy(model), f) for f in formats}
    except ValueError as e:
        sys.exit(f"error: {e}")
    with torch.inference_mode():
        reference = model.generate(prompt, n, temperature=0)  # (1, n + 1)
        fp32_top1 = model(reference[:, :-1], all_logits=True)[0].argmax(dim=-1)
    if r.bin_path:
        val = np.memmap(r.bin_path.replace('train.bin', 'val.bin'), dtype=r.meta['dtype'] if r.meta else np.uint16, mode='r')
        length = min(model.config.block_size, len(val) // 4)
        ids = torch.tensor(np.stack([val[i * length:(i + 1) * length] for i in range(4)]).astype(np.int64))
    else:
        ids = reference
    times = {f: [] for f in formats}
    with r.ctx:
        for f in formats:
            models[f].generate(prompt, min(8, n), temperature=0)  # warm-up
        for _ in range(config['rounds']):
            for f in formats:
                t0 = time.perf_counter()
                models[f].generate(prompt, n, temperature=0)
                sync(r.device_type)
                times[f].append(time.perf_counter() - t0)
    bandwidth = copy_bandwidth()
    kv_per_token = 2 * model.config.n_layer * model.config.kv_heads * \
        (model.config.n_embd // model.config.n_head) * 4 // model.config.kv_share
    print(f"weights_dtype, {n} tokens inside block_size, one sample (copy bandwidth here: "
          f"{bandwidth / 1e9:.1f} GB/s read+write):")
    losses = {}
    for f in formats:
        tps = n / statistics.median(times[f])
        streamed = weights_nbytes(models[f]) + kv_per_token * (n + 1) / 2  # the cache: half full on average
        with torch.inference_mode():
            top1 = models[f](reference[:, :-1], all_logits=True)[0].argmax(dim=-1)
            losses[f] = teacher_forced(models[f], ids)[0] / ids[:, 1:].numel()
        agree = (top1 == fp32_top1).float().mean().item()
        vs_hf = f", {tps / hf_tps:.2f}x transformers generate (fp32)" if hf_tps else ""
        print(f"{f:>10}: {tps:8.1f} tokens/s ({tps * r_tps_base(times, n):.2f}x float32{vs_hf}), "
              f"{streamed / 1e6:.1f} MB/token, {streamed * tps / 1e9:.1f} GB/s "
              f"({streamed * tps / bandwidth:.0%} of copy), top-1 = float32's at {agree:.1%}, "
              f"loss {losses[f]:.4f} (delta {losses[f] - losses['float32']:+.4f})")


def r_tps_base(times, n):
    """1 / float32's tokens/s: multiply a format's tokens/s by it for the speed-up."""
    return statistics.median(times['float32']) / n


@torch.inference_mode()
def recompute_greedy(model, prompt, n):
    """nanoGPT's sampling loop, greedy: a forward over the last block_size tokens per token."""
    idx = prompt
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


@torch.inference_mode()
def check_against_reference(model, out):
    """The cached greedy tokens must be what the reference predicts at every step: for
    rope/none, one forward over the whole sequence with a band of block_size at every layer
    (teacher-forced, so every step is checked at once); learned positions, inside block_size."""
    cfg = model.config
    if cfg.pos_emb == 'learned':
        out = out[:, :cfg.block_size + 1]  # the first block_size + 1 tokens: no crop yet
    band = 0 if cfg.attention == 'linear' else cfg.block_size  # linear: every earlier token
    logits, _ = model(out[:, :-1], all_logits=True, band=band)  # (1, T, V)
    agree = (logits.argmax(dim=-1) == out[:, 1:]).float().mean().item()
    print(f"greedy tokens equal to the {'banded full forward' if band and cfg.pos_emb != 'learned' else 'full forward'} "
          f"at {agree * 100:.1f}% of {out.size(1) - 1} steps")
    if agree < 1:
        sys.exit("error: the cached tokens differ from the reference")


def exported_to_transformers(model):
    """Our model written as a Hugging Face folder and loaded back with AutoModelForCausalLM,
    or None (with the reason) when transformers is missing or the variant cannot export."""
    import tempfile
    try:
        import transformers
        from smallgpt.hf.convert import save_hf
    except ImportError as e:
        print(f"note: no transformers comparison ({e})")
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            save_hf(model.cpu(), folder)
        except ValueError as e:
            print(f"note: no transformers comparison: {e}")
            return None
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                               trust_remote_code=False)
    return hf.to(model.lm_head.weight.device).eval()


# ----------------------------------------------------------------------------- kv mode
def int_list(key):
    try:
        return [int(x) for x in str(config[key]).split(',') if x.strip()]
    except ValueError:
        sys.exit(f"error: --{key} takes comma-separated token counts, e.g. --{key}=16,32")


def kv_rows(cfg, xl_memory=0):
    """The rows of one model: (label, teacher_forced settings). Built from its config, so any
    model gets the rows that apply to it. The report measures whatever cache teacher_forced
    returns, by its nbytes(), per token read: for linear attention, its fixed-size state. An
    XL-trained model decodes like any rope/none model (its memory is a training device)."""
    if cfg.attention == 'linear':  # a fixed-size state per layer: nothing to quantise or evict
        return [('linear state', {})]
    rows = [('full cache', {})]
    rows += [(f'kv_cache_dtype={d}', dict(kv_cache_dtype=d)) for d in ('int8', 'fp8', 'int4')]
    rows += [(f'kv_budget={b}', dict(kv_budget=b)) for b in int_list('kv_budgets')
             if b < cfg.block_size]
    rows += [(f'kv_budget={b}, int4', dict(kv_budget=b, kv_cache_dtype='int4'))
             for b in int_list('kv_budgets')[-1:] if b < cfg.block_size]
    rows += [(f'context_window={w}', dict(context_window=w)) for w in int_list('kv_windows')
             if w < cfg.block_size]
    if xl_memory:  # trained with TransformerXL memory: it saw block_size + xl_memory tokens back
        w = cfg.block_size + xl_memory
        rows.insert(1, (f'context_window={w}', dict(context_window=w)))
    if cfg.pos_emb != 'learned':  # sinks matter where the cache rolls past the context
        rows += [(f'kv_sink={s}', dict(kv_sink=s)) for s in int_list('kv_sinks')
                 if s < cfg.block_size]
    return rows


def val_sequences(run_config, meta, n, length, device):
    """n sequences of `length` tokens, evenly spread over the val split of the run's dataset."""
    import numpy as np
    name = config['dataset'] or run_config.get('dataset', '')
    data_dir = os.path.join(REPO, 'data', name)
    if not os.path.isdir(data_dir) and os.path.isdir(name):
        data_dir = name
    path = os.path.join(data_dir, 'val.bin')
    if not name or not os.path.isfile(path):
        sys.exit(f"error: no val.bin for dataset {name!r} ({data_dir}); run: "
                 f"python data/{name or 'NAME'}/prepare.py, or pass --dataset=NAME")
    data = np.memmap(path, dtype=(meta or {}).get('dtype', 'uint16'), mode='r')
    if len(data) < n * length:
        sys.exit(f"error: {path} has {len(data)} tokens, fewer than --kv_sequences={n} x "
                 f"{length}; lower --kv_sequences or --kv_length")
    starts = np.linspace(0, len(data) - length, n).astype(np.int64)
    return torch.tensor(np.stack([data[s:s + length] for s in starts]).astype(np.int64),
                        device=device)


def quantisation_errors(model, ids):
    """Relative RMS error of each storage format on this model's real keys and values: the
    full cache after the first block_size tokens, every layer."""
    from smallgpt.kvcache import roundtrip
    from smallgpt.generate import teacher_forced
    _, cache = teacher_forced(model, ids[:, :model.config.block_size + 1])
    formats = {'int8 absmax/token': 'int8', 'fp8 e4m3/token': 'fp8', 'int4 g32 rotated': 'int4'}
    errors = {}
    for name, fmt in formats.items():
        for keys, bufs in (('K', cache.k), ('V', cache.v)):
            err = [((roundtrip(fmt, x, keys == 'K') - x).norm() / x.norm()).item() for x in bufs]
            errors[name, keys] = max(err)
    for keys, bufs in (('K', cache.k), ('V', cache.v)):  # the alternatives, for the README
        errors['int8 asymmetric/token', keys] = max(asymmetric_int8_error(x) for x in bufs)
        errors['int4 g32 unrotated', keys] = max(
            ((engine_int4(x, rotate=False) - x).norm() / x.norm()).item() for x in bufs)
    return errors


def asymmetric_int8_error(x):
    """int8 with a per-token offset: 255 levels between each vector's min and max."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = ((hi - lo) / 255).clamp(min=1e-8)
    return ((((x - lo) / scale).round() * scale + lo - x).norm() / x.norm()).item()


def engine_int4(x, rotate):
    from smallgpt.kvcache import Int4Store
    store = Int4Store(tuple(x.shape), x.dtype, x.device, rotate=rotate)
    store[:, :, :] = x
    return store[:, :, :]


def bench_kv():
    """Each run's next-token loss on its val split through the cache, one token at a time, for
    each compressed-cache setting: a Markdown table and kv_frontier.png (bits/token vs loss)."""
    from smallgpt.generate import teacher_forced
    if not out_dirs:
        sys.exit("error: --mode=kv needs a trained run: --out_dir=RUN (repeat for several)")
    dev = pick_device(device)
    table, points = [], []
    for run in out_dirs:
        path = os.path.join(run, 'ckpt.pt')
        try:
            ckpt = load_checkpoint(path, 'cpu')
            model = GPT.from_checkpoint(ckpt, dropout=0.0, path=path).to(dev).eval()
        except CheckpointError as e:
            sys.exit(f"error: {e}")
        cfg = model.config
        length = config['kv_length'] or 4 * cfg.block_size
        ids = val_sequences(ckpt.get('config') or {}, ckpt.get('meta'), config['kv_sequences'],
                            length, dev)
        name = os.path.basename(os.path.normpath(run))
        note = ' (learned positions: cropped to the last block_size)' \
            if cfg.pos_emb == 'learned' and length > cfg.block_size else ''
        print(f"{name}: {cfg.n_layer} layers x {cfg.n_embd}, block {cfg.block_size}, "
              f"{describe_variant(cfg)}; {config['kv_sequences']} val sequences x {length} tokens"
              f"{note}", flush=True)
        full = None
        for label, settings in kv_rows(cfg, (ckpt.get('config') or {}).get('xl_memory', 0)):
            t0 = time.perf_counter()
            nll, cache = teacher_forced(model, ids, **settings)
            seconds = time.perf_counter() - t0
            predictions = ids.size(0) * (length - 1)
            loss = nll / predictions
            full = loss if full is None else full
            # per token read: a cropped (learned) cache restarts its length at each re-prefill
            bits = cache.nbytes() * 8 / predictions
            row = (name, label, bits, loss, loss - full, predictions / seconds)
            table.append(row)
            points.append(row)
            print(f"  {label}: {bits:,.0f} bits/token, loss {loss:.4f}", flush=True)
        if cfg.attention == 'linear':
            continue  # no keys and values are kept to quantise
        errors = quantisation_errors(model, ids)
        print(f"  quantisation error (relative RMS, worst layer) of {name}'s keys / values: " +
              "; ".join(f"{fmt} {errors[fmt, 'K']:.4f} / {errors[fmt, 'V']:.4f}"
                        for fmt in dict.fromkeys(f for f, _ in errors)))
    print()
    print(f"| model | cache | KV bits/token | loss | Δloss | decode tokens/s (batch {config['kv_sequences']}) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, label, bits, loss, delta, tps in table:
        print(f"| {name} | {label} | {bits:,.0f} | {loss:.4f} | {delta:+.4f} | {tps:,.0f} |")
    plot_frontier(points)


def describe_variant(cfg):
    changed = [f"{k}={getattr(cfg, k)!r}" for k in VARIANT_KEYS
               if getattr(cfg, k) != getattr(GPTConfig, k)]
    return ', '.join(changed) or 'GPT-2 attention'


def plot_frontier(points):
    from smallgpt.runlog import import_matplotlib, save_figure
    make_figure = import_matplotlib()
    if make_figure is None:
        return
    fig = make_figure(figsize=(9, 6))
    ax = fig.subplots()
    for name in dict.fromkeys(p[0] for p in points):
        mine = [p for p in points if p[0] == name]
        dots = ax.plot([p[2] for p in mine], [p[3] for p in mine], 'o', label=name)[0]
        for _, label, bits, loss, _, _ in mine:
            ax.annotate(label.replace('kv_cache_dtype=', '').replace('context_window', 'window'),
                        (bits, loss), fontsize=6, color=dots.get_color(),
                        xytext=(3, 2), textcoords='offset points')
    ax.set_xscale('log')
    ax.set_xlabel('KV cache bits per token read (all layers)')
    ax.set_ylabel('val loss through the cache (nats/token)')
    ax.set_title('How low can the KV cache go: memory vs loss')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder = config['report_dir'] or out_dirs[0]
    os.makedirs(folder, exist_ok=True)
    png = os.path.join(folder, 'kv_frontier.png')
    save_figure(fig, png)
    print(f"\nwrote {png}")


torch.set_grad_enabled(True)
if fast_cpu and pick_device(device) == 'cpu':
    reuse_freed_memory()
if mode == 'train':
    bench_train()
elif mode == 'generate':
    bench_generate()
elif mode == 'kv':
    bench_kv()
else:
    sys.exit(f"error: mode must be 'train', 'generate' or 'kv', got {mode!r}")
