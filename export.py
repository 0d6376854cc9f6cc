"""
Export a train.py checkpoint as a Hugging Face folder (config.json, model.safetensors and the
tokenizer), then check that transformers computes the same logits. A model
with learned positions becomes a GPT-2; a rotary one (pos_emb='rope', any n_kv_head, one
attn_window for every layer) a Starcoder2. AutoModelForCausalLM loads either.

    python export.py --out_dir=out-don --hf_dir=hf-don
    python export.py --out_dir=out-don --hf_dir=hf-don --checkpoint_name=last.pt
    python export.py --out_dir=out-don --hf_dir=hf-don --tokenizer_dir=DIR  # BPE files
`python export.py --help` lists every setting below. Needs transformers; runs on the CPU, offline.

The tokenizer: a model of a char, bytes or own-BPE dataset (data/*/prepare.py --tokenizer=...)
gets its tokenizer.json from the checkpoint (a char one drops characters it lacks, where
sample.py refuses them); a GPT-2 BPE model gets GPT-2's files (--tokenizer_dir or the Hugging
Face cache). smallgpt_meta.json keeps the checkpoint's vocabulary beside them, for sample.py
and eval.py --init_from=hf_dir. See smallgpt/hf/gpt2.py and smallgpt/hf/starcoder2.py for what can and cannot be
exported.
"""

import os

import torch

# -----------------------------------------------------------------------------
# defaults (a config file or --key=value overrides any of these)
out_dir = 'out'  # the training run folder that holds the checkpoint
checkpoint_name = 'ckpt.pt'  # ckpt.pt (best val loss) or last.pt (latest)
hf_dir = ''  # where to write the Hugging Face folder ('' = <out_dir>/hf)
tokenizer_dir = ''  # GPT-2 BPE files to ship: encoder.json + vocab.bpe, or vocab.json + merges.txt
parity_tokens = 32  # random tokens per row run through both models to show they agree (0 = skip)
seed = 1337  # for those random tokens
# -----------------------------------------------------------------------------
from configurator import configure  # noqa: E402

configure(globals())

from model import GPT  # noqa: E402
from smallgpt.checkpoint import (CheckpointError, load_checkpoint, resolve_name)  # noqa: E402
from smallgpt.errors import fail, quiet_ctrl_c  # noqa: E402
from smallgpt.hf.common import GPT2_BPE_VOCAB_SIZES, write_vocab_meta  # noqa: E402
from smallgpt.hf.convert import save_hf  # noqa: E402
from smallgpt.tokenizer import Tokenizer  # noqa: E402

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")


# ----------------------------------------------------------------------------- load
ckpt_path = os.path.join(out_dir, resolve_name(checkpoint_name))
hf_dir = hf_dir or os.path.join(out_dir, 'hf')
quiet_ctrl_c(f"{hf_dir} may be half written; run export.py again (the checkpoint is untouched)")
if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
    fail(f"--hf_dir={hf_dir} is a file, not a folder; pass another --hf_dir")
try:
    checkpoint = load_checkpoint(ckpt_path, 'cpu')
    model = GPT.from_checkpoint(checkpoint)
except CheckpointError as e:
    fail(e)
model.eval()
dataset = (checkpoint.get('config') or {}).get('dataset')
meta = checkpoint.get('meta') or {}
try:  # the model's own vocabulary goes with it; a tiktoken one is GPT-2's files (below)
    tokenizer = Tokenizer.from_meta(meta) if meta.get('tokenizer') in ('char', 'bytes', 'bpe') else None
except ValueError as e:
    fail(e)
print(f"loaded {ckpt_path} (iter {checkpoint.get('iter_num')}, "
      f"{model.get_num_params() / 1e6:.2f}M parameters, vocab {model.config.vocab_size})")
del checkpoint

# ----------------------------------------------------------------------------- export
try:
    import transformers
except ImportError:
    fail("export.py needs Hugging Face transformers; run: pip install transformers")

transformers.utils.logging.disable_progress_bar()  # a bar for a single shard is only noise
try:
    tokenizer_files = save_hf(model, hf_dir, tokenizer_dir or None, tokenizer)
except (ValueError, RuntimeError, OSError) as e:
    fail(e)
write_vocab_meta(hf_dir, meta)  # sample.py / eval.py --init_from=hf_dir read the vocabulary back
print(f"wrote {hf_dir}: {', '.join(sorted(os.listdir(hf_dir)))}")
stale = [f for f in TOKENIZER_FILES if f not in tokenizer_files
         and os.path.exists(os.path.join(hf_dir, f))]
if stale:  # left by an earlier export to the same folder; they may describe another vocabulary
    print(f"WARNING: {hf_dir} still holds {', '.join(stale)} from before; delete them unless "
          f"they are this model's tokenizer")

# ----------------------------------------------------------------------------- parity check
# Reload what was written, as a user would, and run the same tokens through both models.
hf, info = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True,
                                                             trust_remote_code=False,
                                                             output_loading_info=True)
problems = {k: sorted(v) for k, v in info.items() if k != 'error_msgs' and v}
if problems or info.get('error_msgs'):
    fail(f"transformers did not load {hf_dir} cleanly: {problems or info['error_msgs']}")
hf.float().eval()
architecture = type(hf).__name__  # GPT2LMHeadModel or Starcoder2ForCausalLM
if parity_tokens > 0:
    T = min(parity_tokens, model.config.block_size)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=generator)  # (B, T)
    with torch.no_grad():
        ours, _ = model(idx, all_logits=True)  # (B, T, V)
        theirs = hf(idx).logits                 # (B, T, V)
    diff = (ours - theirs).abs().max().item()
    scale = ours.abs().max().item()
    print(f"max abs logits difference, model.py vs transformers: {diff:.2e} "
          f"(logits up to {scale:.1f}; {idx.numel()} random tokens)")
    # fp32 kernels that sum in another order differ by ~1e-6 of the logit scale; a wrong GELU
    # flavour is ~1e-4 of it on a tiny random model, a misplaced weight ~1
    if diff > 1e-4 * max(1.0, scale):
        fail(f"the exported model computes different logits (max difference {diff:.2e}); "
             f"this is a bug in the {architecture} export, please report it")

print(f"""
Load it with transformers (or AutoModelForCausalLM):
    from transformers import {architecture}{', AutoTokenizer' if tokenizer_files else ''}
    model = {architecture}.from_pretrained({hf_dir!r})""")
if tokenizer_files:
    print(f"    tokenizer = AutoTokenizer.from_pretrained({hf_dir!r})")
elif model.config.vocab_size in GPT2_BPE_VOCAB_SIZES:
    print("    tokenizer = AutoTokenizer.from_pretrained('gpt2')  # or export with --tokenizer_dir")
else:
    where = f"data/{dataset}/meta.json" if dataset else "the dataset's meta.json"
    print(f"    # token ids are this model's own vocabulary: see {where}")
