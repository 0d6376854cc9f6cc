"""
Sample from a trained model (a checkpoint in out_dir) or from GPT-2 weights.

    python sample.py --out_dir=out-don-char
    python sample.py --out_dir=out-don-small-char --device=cpu --start="Sancho said" --num_samples=3
    python sample.py --start=FILE:prompt/don.txt --max_new_tokens=300 --temperature=0
    python sample.py --start="To be|Once upon a time" --stop="\n\n"   # two prompts, one batch
    python sample.py --init_from=gpt2-xl --start="What is the answer?" --num_samples=5
    python sample.py --out_dir=out-don-char --interactive=True       # a prompt loop
    python sample.py --out_dir=out-add --start="12+34=|99+99=" --temperature=0 --num_samples=1
`python sample.py --help` lists every setting below.
"""

import contextlib
import os
import re
import sys

import torch

# -----------------------------------------------------------------------------
# defaults (a config file or --key=value overrides any of these)
init_from = 'resume'  # 'resume' (a checkpoint in out_dir), gpt2*, or a local HF GPT-2/Starcoder2 folder
out_dir = 'out'  # where train.py wrote its checkpoints
checkpoint_name = 'ckpt.pt'  # ckpt.pt (best val loss) or last.pt (latest)
start = "\n"  # the prompt: text, FILE:path, '<|endoftext|>'; several prompts split by '|'
prompt_separator = '|'  # splits start into prompts generated as one batch ('' = never split)
num_samples = 10  # samples per prompt (interactive mode: 1, streamed, unless --num_samples is given)
max_new_tokens = 500  # tokens generated per sample
temperature = 0.8  # 1.0 = as trained, < 1 more conservative, 0 = greedy (always the top token)
top_k = 200  # keep only the k most likely tokens (0 = all)
top_p = 1.0  # keep the smallest set of tokens with this much probability (1.0 = all)
stop = ''  # stop a sample where this text appears (it is not printed); \n, \t typed here work
stop_at_eot = False  # stop a sample at GPT-2's <|endoftext|> token
stop_at_line_end = True  # line datasets (docs/lines.md): a sample ends with its line
stream = True  # print text as it is generated (when there is a single sample)
seed = 1337
device = 'auto'  # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
dtype = 'auto'  # auto (CPU: float32, fastest for decoding; GPU: bf16/fp16), float32, bfloat16, float16
compile = False  # torch.compile the model (pays off only for long generations)
weights_dtype = 'float32'  # weights for decoding: float32, bfloat16 or int8 (per-row scales): fewer bytes per token, faster on a CPU (docs/performance.md)
use_cache = True  # KV cache; False recomputes the whole context per token (nanoGPT's way)
context_window = 0  # tokens of context each prediction sees (0 = block_size, + xl_memory if trained with it; -1 = all, rope/none: past block_size)
window_chunk = 1  # past the window: 1 = exact nanoGPT cropping, more = faster (docs/sampling.md)
kv_cache_dtype = 'auto'  # KV cache storage: auto (as computed), int8, fp8 or int4 (docs/kv-compression.md)
kv_budget = 0  # tokens each layer's cache keeps: the most attended plus a recent window (0 = all)
kv_sink = 0  # rope/none past the context: the first N tokens stay in the cache (0 = off)
interactive = False  # a prompt loop that keeps the model loaded
# -----------------------------------------------------------------------------
from configurator import configure  # noqa: E402

configure(globals(), echo=False)  # stdout is only the generated text

from model import GPT  # noqa: E402
from smallgpt.checkpoint import load_model  # noqa: E402
from smallgpt.quantize import quantize_weights  # noqa: E402
from smallgpt.device import autocast_context, device_type_of, pick_device, pick_dtype  # noqa: E402
from smallgpt.errors import fail, quiet_ctrl_c  # noqa: E402
from smallgpt.generate import TextSample, decode_samples  # noqa: E402
from smallgpt.tokenizer import EOT_TEXT, Tokenizer, check_vocab_fits, encode_prompt  # noqa: E402
from smallgpt.interactive import setting_error  # noqa: E402
from smallgpt.lines import is_line_dataset  # noqa: E402

quiet_ctrl_c()  # a stopped sample has nothing to save: no traceback

REPO = os.path.dirname(os.path.abspath(__file__))


def unescape(text):
    """A shell passes --stop="\\n" as backslash + n: read \\n, \\t and \\\\ as the characters."""
    return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m.group(1)], text)


stop = unescape(stop)
settings = dict(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                top_k=top_k, top_p=top_p, seed=seed)
for _name, _value in settings.items():  # before loading anything: a typo costs no wait
    if setting_error(_name, _value):
        fail(setting_error(_name, _value))


# ----------------------------------------------------------------------------- model + vocab
try:
    device = pick_device(device)
    device_type = device_type_of(device)
    dtype = pick_dtype(dtype, device_type, quiet=True, training=False)
except ValueError as e:
    fail(e)
ctx = autocast_context(device_type, dtype)

try:
    model, meta, train_config = load_model(GPT, init_from, out_dir, checkpoint_name, device)
except (OSError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
    fail(e)
try:
    quantize_weights(model, weights_dtype)
except ValueError as e:
    fail(e)
xl_memory = (train_config or {}).get('xl_memory', 0)
if xl_memory and not context_window:
    # a TransformerXL-trained model saw block_size + xl_memory tokens back: decode with as many
    context_window = model.config.block_size + xl_memory
    print(f"note: trained with xl_memory={xl_memory}: context_window={context_window} "
          f"(block_size + xl_memory); pass --context_window to change it", file=sys.stderr)
if compile:
    model.compile(dynamic=True)  # in place: generate_stream's self(...) calls go through it
try:
    tokenizer = Tokenizer.from_meta(meta)
    check_vocab_fits(tokenizer, model.config.vocab_size)
except (ValueError, RuntimeError, OSError) as e:
    fail(e)
# seeded after loading: building a model draws random numbers too, and a sample should depend
# on the seed alone (workbench.py's generate seeds the same way, so both give the same text)
torch.manual_seed(seed)
if device_type == 'cuda':
    torch.cuda.manual_seed(seed)
# a model of a line dataset learned that a sample ends with its end-of-line token
line_end = tokenizer.encode(meta['lines']['end_of_line'])[0] \
    if stop_at_line_end and is_line_dataset(meta) else None


def read_prompt(text):
    """FILE:path reads a file (relative to here, else to prompt/); anything else is the text."""
    if not text.startswith('FILE:'):
        return text
    path = text[len('FILE:'):]
    for candidate in (path, os.path.join(REPO, 'prompt', path), os.path.join(REPO, path)):
        if os.path.isfile(candidate):
            with open(candidate, 'rb') as f:
                raw = f.read()
            try:
                return raw.decode('utf-8')
            except UnicodeDecodeError as e:
                fail(f"prompt file {candidate} is not valid UTF-8 (byte {e.start}: {e.reason}); "
                     f"re-save it as UTF-8")
    fail(f"prompt file {path!r} not found (looked here and in {os.path.join(REPO, 'prompt')})")



def split_prompts(text):
    """Prompts separated by prompt_separator; '<|endoftext|>' is never cut, even by '|'."""
    if not prompt_separator:
        return [text]
    parts = text.replace(EOT_TEXT, '\0').split(prompt_separator)
    return [p.replace('\0', EOT_TEXT) for p in parts]


def encode(text):
    """Token ids of a prompt (textdata.encode_prompt: '<|endoftext|>' is GPT-2's token); a
    ValueError for an empty prompt or characters the vocabulary lacks."""
    return encode_prompt(tokenizer, text)


# ----------------------------------------------------------------------------- generation
stop_ids = ([tokenizer.eot_token] if stop_at_eot and tokenizer.eot_token is not None else []) + \
    ([line_end] if line_end is not None else [])


def generate(prompts, settings, show_stream):
    """Generate settings['num_samples'] samples per prompt as one batch; return the TextSamples."""
    rows = [p for p in prompts for _ in range(settings['num_samples'])]
    samples = [TextSample(p, tokenizer, stop, stop_ids) for p in rows]
    stream_iter = model.generate_stream(  # a bad setting raises here, before any output
        [encode(p) for p in rows], settings['max_new_tokens'], settings['temperature'],
        settings['top_k'] or None, settings['top_p'], use_cache=use_cache,
        context_window=context_window or None, window_chunk=window_chunk,
        kv_cache_dtype=kv_cache_dtype, kv_budget=kv_budget, kv_sink=kv_sink)
    if show_stream:
        print(rows[0], end='', flush=True)
    try:
        with ctx, contextlib.closing(decode_samples(samples, stream_iter)) as steps:
            for _ in steps:
                if show_stream:
                    print(samples[0].ready_text(), end='', flush=True)
    finally:
        if show_stream:
            print(samples[0].ready_text(), flush=True)
    return samples


def run_once():
    prompts = [read_prompt(p) for p in split_prompts(start)]
    for p in prompts:
        encode(p)  # check every prompt before generating any
    single = len(prompts) * num_samples == 1
    samples = generate(prompts, settings, show_stream=stream and single)
    if not (stream and single):
        for s in samples:
            print(s.prompt + s.text)
            print('---------------')


if interactive:
    from smallgpt.interactive import prompt_loop
    if not any(a.startswith('--num_samples=') for a in sys.argv[1:]):
        settings['num_samples'] = 1  # watch one completion stream; /num_samples N for more
    prompt_loop(generate, settings, encode)
else:
    try:
        run_once()
    except ValueError as e:  # e.g. characters the vocabulary doesn't have
        fail(e)
    except BrokenPipeError:  # `python sample.py ... | head` stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second one at exit
