"""
Break the code on purpose, one mechanism at a time, and check that the fast test suite notices.

    python tests/mutate.py                     # every mutant (about 25 minutes on 2 cores)
    python tests/mutate.py --list              # the mutants, each with the tests tried first
    python tests/mutate.py --only warmup-formula --only causal-mask-off-by-one
    python tests/mutate.py --baseline=likely   # check the unmutated copy on the likely tests only

Not part of `make test`: it runs the suite dozens of times. For each run it copies the repo (the
files git tracks plus untracked ones it doesn't ignore) into a temp folder whose parent has no
shared/, with NANOGPT_TEST_DATA and TIKTOKEN_CACHE_DIR pointing at empty folders and the Hugging
Face hub offline: the fast suite as a user's fresh clone runs it, with no offline data.
The unmutated copy must pass first. Then, for each mutant: replace one exact snippet of one
file, run the mutant's likely tests (-x, stop at the first failure) and, only if they pass, the
whole fast suite; restore the file. CAUGHT means some test failed; SURVIVED means none did,
so a test is missing. When the failing test is not one of the likely ones, it is run again
alone, with and without the mutant: FLAKY (counted as not caught) unless it fails with the
mutant and passes without. Every snippet must occur exactly once in the current source: a refactor
that makes a mutant stale stops the script (fix the snippet) instead of counting as caught.

To add a mutant, append a Mutant to MUTANTS: a name, the file, the exact text to replace, its
replacement and the tests most likely to catch it (files or file::test ids, tried in order).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    name: str     # what breaks, in a few words
    file: str     # relative to the repo root
    old: str      # exact source text, found exactly once in `file`
    new: str      # what it becomes
    tests: tuple  # likely to catch it: test files or node ids, run first (fast ones first)


MECH = "tests/test_mechanisms.py"
TRAIN_MECH = "tests/test_train_mechanics.py"
LOOP = f"{TRAIN_MECH}::test_training_steps_match_a_hand_written_loop"
ACCUMULATION = f"{TRAIN_MECH}::test_gradient_accumulation_equals_one_bigger_batch"
EVAL = f"{TRAIN_MECH}::test_eval_loss_is_the_mean_over_evenly_spread_windows"
RESUME = f"{TRAIN_MECH}::test_sigterm_stops_like_ctrl_c_and_bf16_resume_is_exact"
GPT2 = f"{TRAIN_MECH}::test_train_loss_on_gpt2_weights_equals_gpt2lmheadmodels"
TRAIN = "tests/test_train.py"
PARITY = f"{TRAIN}::test_resume_parity_exact"
NAIVE = "tests/test_model.py::test_logits_match_a_naive_reference"
DROPOUT = "tests/test_model.py::test_fast_cpu_dropout_matches_dropouts_definition"
SAMPLING = "tests/test_sampling.py"
MEMORY = "tests/test_memory.py"
SEQUENTIAL = f"{MEMORY}::test_sequential_rows_continue_where_they_stopped_and_wrap"
XL_RESUME = f"{MEMORY}::test_xl_training_resumes_exactly"
XL_JOINT = f"{MEMORY}::test_xl_segment_equals_one_causal_forward_over_all_segments"
LINEAR_FORMS = f"{MEMORY}::test_chunked_form_equals_the_definition_and_the_recurrent_steps"
LINEAR_DECODE = f"{MEMORY}::test_linear_model_decoding_equals_the_full_forward"
LINEAR_GENERATE = f"{MEMORY}::test_linear_generation_has_no_length_limit_and_constant_memory"
TOP_P = f"{SAMPLING}::test_top_p_keeps_the_smallest_set_reaching_p"
FREQUENCIES = f"{SAMPLING}::test_sample_frequencies_follow_temperature_and_filters"
VARIANTS = "tests/test_attention_variants.py"
KV = "tests/test_kv_compression.py"
HF_VARIANTS = "tests/test_hf_variants.py"

MUTANTS = [
    # ---------------------------------------------------------------- data windows and targets
    Mutant("targets-shifted-by-two", "smallgpt/dataloader.py",
           "return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()",
           "return rows[:, :-1].contiguous(), torch.roll(rows[:, 1:], -1, dims=1).contiguous()",
           (MECH, EVAL)),
    Mutant("random-windows-miss-the-last-start", "smallgpt/dataloader.py",
           "torch.randint(len(data) - block_size, (batch_size,)",
           "torch.randint(len(data) - block_size - 1, (batch_size,)",
           (MECH,)),
    Mutant("eval-windows-stop-one-token-early", "smallgpt/dataloader.py",
           "np.linspace(0, n_tokens - block_size - 1, n_windows)",
           "np.linspace(0, n_tokens - block_size - 2, n_windows)",
           (MECH, EVAL)),
    Mutant("meta-dtype-ignored", "smallgpt/runsetup.py",
           "token_dtype = np.dtype(meta['dtype'] if meta else 'uint16')",
           "token_dtype = np.dtype('uint16')",
           (EVAL,)),
    # ---------------------------------------------------------------- learning-rate schedule
    Mutant("warmup-formula", "smallgpt/runstate.py",
           "return learning_rate * (it + 1) / (warmup_iters + 1)",
           "return learning_rate * it / warmup_iters",
           (LOOP,)),
    Mutant("cosine-becomes-linear", "smallgpt/runstate.py",
           "coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))",
           "coeff = 1.0 - ratio",
           (LOOP,)),
    Mutant("no-min-lr-floor-after-decay", "smallgpt/runstate.py",
           "    if it > lr_decay_iters:\n        return min_lr\n",
           "",
           (LOOP,)),
    Mutant("schedule-never-reaches-the-optimizer", "train.py",
           "        group['lr'] = lr\n",
           "        pass\n",
           (LOOP,)),
    # ---------------------------------------------------------------- the optimizer step
    Mutant("accumulation-loss-not-divided", "train.py",
           "loss = loss / gradient_accumulation_steps",
           "loss = loss",
           (ACCUMULATION, LOOP)),
    Mutant("accumulation-reuses-one-micro-batch", "train.py",
           "            X, Y = batches.get('train', micro_batches[micro_step + 1])",
           "            pass",
           (ACCUMULATION,)),
    Mutant("no-gradient-clipping", "train.py",
           "        torch.nn.utils.clip_grad_norm_(params, grad_clip)",
           "        pass",
           (LOOP,)),
    Mutant("clipping-by-value-not-norm", "train.py",
           "        torch.nn.utils.clip_grad_norm_(params, grad_clip)",
           "        torch.nn.utils.clip_grad_value_(params, grad_clip)",
           (LOOP,)),
    Mutant("weight-decay-on-every-parameter", "model.py",
           "        decay = [p for p in params if p.dim() >= 2]\n"
           "        no_decay = [p for p in params if p.dim() < 2]\n",
           "        decay = params\n        no_decay = []\n",
           ("tests/test_model.py::test_configure_optimizers_groups", LOOP)),
    Mutant("weight-decay-on-no-parameter", "model.py",
           '{"params": decay, "weight_decay": weight_decay}',
           '{"params": decay, "weight_decay": 0.0}',
           ("tests/test_model.py::test_configure_optimizers_groups", LOOP)),
    # ---------------------------------------------------------------- the model
    Mutant("attention-scale-1-over-d", "model.py",
           "scale = 1.0 / math.sqrt(q.size(-1))",
           "scale = 1.0 / q.size(-1)",
           (NAIVE,)),
    Mutant("causal-mask-off-by-one", "smallgpt/fast_cpu.py",
           "allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()",
           "allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril(1)",
           (NAIVE,)),
    Mutant("boolean-causal-mask-off-by-one", "model.py",
           "mask = k_pos <= q_pos  ",
           "mask = k_pos <= q_pos + 1  ",
           (f"{SAMPLING}::test_ragged_batch_equals_each_prompt_alone",
            "tests/test_attention_variants.py")),
    Mutant("kv-cache-positions-off-by-one", "smallgpt/kvcache.py",
           "pos = torch.arange(self.length, self.length + T, device=device)",
           "pos = torch.arange(self.length + 1, self.length + T + 1, device=device)",
           (f"{SAMPLING}::test_greedy_cache_equals_no_cache_and_nanogpt_loop",)),
    Mutant("int8-cache-scale-too-small", "smallgpt/kvcache.py",
           "scale = (absmax / 127).clamp(min=6.2e-5).to(torch.float16)",
           "scale = (absmax / 128).clamp(min=6.2e-5).to(torch.float16)",
           (f"{KV}::test_stored_codes_are_within_half_a_step_of_the_full_cache",)),
    Mutant("int4-cache-nibbles-swapped", "smallgpt/kvcache.py",
           "self.codes[key] = codes[..., 0::2] | (codes[..., 1::2] << 4)",
           "self.codes[key] = codes[..., 1::2] | (codes[..., 0::2] << 4)",
           (f"{KV}::test_int4_store_packs_two_codes_per_byte",)),
    Mutant("kv-budget-forgets-the-recent-window", "smallgpt/kvcache.py",
           "priority = torch.where(recent, torch.inf, score)",
           "priority = score",
           (f"{KV}::test_eviction_keeps_the_recent_window_and_each_keys_own_rotation",)),
    Mutant("kv-budget-scores-summed-over-keys", "smallgpt/kvcache.py",
           "self.pending[slot][3] += att.softmax(dim=-1).sum(dim=(2, 3))",
           "self.pending[slot][3] += att.softmax(dim=-2).sum(dim=(2, 3))",
           (f"{KV}::test_eviction_drops_the_least_attended_tokens",)),
    Mutant("kv-sink-columns-off-by-one", "smallgpt/kvcache.py",
           "(k_pos < first + sink))",
           "(k_pos <= first + sink))",
           (f"{KV}::test_sinks_equal_the_band_plus_the_first_columns",)),
    Mutant("gelu-flavours-swapped", "model.py",
           'nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")',
           'nn.GELU(approximate="none" if config.gelu == "tanh" else "tanh")',
           (NAIVE, "tests/test_hf.py")),
    Mutant("hf-gelu-new-read-as-erf", "smallgpt/hf/common.py",
           'HF_TO_OUR_GELU = {"gelu_new": "tanh",',
           'HF_TO_OUR_GELU = {"gelu_new": "exact",',
           ("tests/test_hf.py", GPT2)),
    Mutant("starcoder2-export-window-one-wider", "smallgpt/hf/starcoder2.py",
           "sliding_window=window or None,",
           "sliding_window=window + 1 if window else None,",
           (HF_VARIANTS,)),
    Mutant("starcoder2-import-window-one-wider", "smallgpt/hf/starcoder2.py",
           "attn_window=config.sliding_window or 0,",
           "attn_window=(config.sliding_window or -1) + 1,",
           (HF_VARIANTS,)),
    Mutant("lm-head-untied", "model.py",
           "        self.transformer.wte.weight = self.lm_head.weight\n",
           "",
           ("tests/test_model.py",)),
    Mutant("layernorm-eps-1e-3", "model.py",
           "self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)",
           "self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias, eps=1e-3)",
           (NAIVE,)),
    Mutant("dropout-not-rescaled", "smallgpt/fast_cpu.py",
           "scale = 1.0 / (1.0 - (cut + 32768) / 65536)",
           "scale = 1.0",
           (DROPOUT,)),
    Mutant("dropout-keeps-p-drops-1-minus-p", "smallgpt/fast_cpu.py",
           "cut = round(self.p * 65536) - 32768",
           "cut = round((1 - self.p) * 65536) - 32768",
           (DROPOUT,)),
    Mutant("no-attention-dropout", "model.py",
           "        att = self.attn_dropout(att)\n",
           "",
           (f"{MECH}::test_attention_dropout_is_random_and_unbiased",)),
    # ---------------------------------------------------------------- attention variants
    Mutant("gqa-kv-heads-tiled-not-grouped", "model.py",
           "x[:, :, None].expand(B, nkv, n_head // nkv, S, hd)",
           "x[:, None].expand(B, n_head // nkv, nkv, S, hd)",
           ("tests/test_attention_variants.py",)),
    Mutant("rope-turns-the-other-way", "model.py",
           "torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), sin)",
           "torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), -sin)",
           ("tests/test_attention_variants.py",)),
    Mutant("attention-window-one-token-wider", "model.py",
           "mask = mask & (k_pos > q_pos - window)",
           "mask = mask & (k_pos >= q_pos - window)",
           ("tests/test_attention_variants.py",)),
    # ---------------------------------------------------------------- sampling filters
    Mutant("top-k-keeps-one-more", "smallgpt/generate.py",
           "torch.topk(logits, min(top_k, logits.size(-1)))",
           "torch.topk(logits, min(top_k + 1, logits.size(-1)))",
           (f"{SAMPLING}::test_top_k_keeps_exactly_the_k_largest",)),
    Mutant("top-p-keeps-one-fewer", "smallgpt/generate.py",
           "mass_before = torch.cumsum(probs, dim=-1) - probs",
           "mass_before = torch.cumsum(probs, dim=-1)",
           (TOP_P,)),
    Mutant("top-p-keeps-one-more", "smallgpt/generate.py",
           "sorted_logits[mass_before >= top_p] = float(\"-inf\")",
           "sorted_logits[..., 1:][mass_before[..., :-1] >= top_p] = float(\"-inf\")",
           (TOP_P,)),
    Mutant("temperature-ignored", "smallgpt/generate.py",
           "filter_logits(logits / temperature, top_k, top_p)",
           "filter_logits(logits, top_k, top_p)",
           (FREQUENCIES,)),
    Mutant("temperature-applied-twice", "smallgpt/generate.py",
           "filter_logits(logits / temperature, top_k, top_p)",
           "filter_logits(logits / temperature / temperature, top_k, top_p)",
           (FREQUENCIES,)),
    # ---------------------------------------------------------------- signals, resume
    Mutant("sigterm-not-handled", "smallgpt/runstate.py",
           "        signal.signal(signal.SIGTERM, self.request)\n",
           "",
           (RESUME,)),
    Mutant("sampler-state-not-restored", "smallgpt/runstate.py",
           "        self.sampler.set_state(state['sampler'])",
           "        pass",
           (PARITY, RESUME)),
    Mutant("dropout-rng-not-restored", "smallgpt/runstate.py",
           "        torch.set_rng_state(state['torch'])",
           "        pass",
           (PARITY, RESUME)),
    Mutant("optimizer-state-not-loaded", "smallgpt/checkpoint.py",
           "        optimizer.load_state_dict(checkpoint[\"optimizer\"])",
           "        pass",
           (PARITY, RESUME)),
    Mutant("resume-one-iteration-late", "smallgpt/checkpoint.py",
           "    iter_num = checkpoint[\"iter_num\"]",
           "    iter_num = checkpoint[\"iter_num\"] + 1",
           (f"{TRAIN}::test_resume_continues_from_saved_iteration",)),
    Mutant("no-eval-at-the-last-iteration", "train.py",
           "(iter_num % eval_interval == 0 or iter_num == last_iter or eval_only)",
           "(iter_num % eval_interval == 0 or eval_only)",
           (f"{TRAIN}::test_resume_continues_from_saved_iteration",)),
    Mutant("checkpoint-interval-ignored", "train.py",
           "checkpoint_every = checkpoint_interval or eval_interval",
           "checkpoint_every = eval_interval",
           (f"{TRAIN}::test_nonfinite_loss_stops_and_keeps_last_good_checkpoint",)),
    Mutant("ckpt-pt-saved-when-val-got-worse", "train.py",
           "(improved or always_save_checkpoint)",
           "(True or always_save_checkpoint)",
           (f"{TRAIN}::test_best_val_loss_never_increases",)),
    Mutant("best-val-loss-reset-on-resume", "smallgpt/checkpoint.py",
           "    best_val_loss = float(checkpoint[\"best_val_loss\"])",
           "    best_val_loss = float(\"inf\")",
           (f"{TRAIN}::test_best_val_loss_never_increases",)),
    # ---------------------------------------------------------------- checkpoint files
    Mutant("checkpoint-written-in-place", "smallgpt/checkpoint.py",
           '    tmp = f"{path}.tmp.{os.getpid()}"\n',
           '    torch.save(obj, path)\n    return\n    tmp = f"{path}.tmp.{os.getpid()}"\n',
           (MECH,)),
    Mutant("checkpoint-not-synced", "smallgpt/checkpoint.py",
           "            os.fsync(f.fileno())",
           "            pass",
           (MECH,)),
    Mutant("checkpoint-weights-loaded-non-strict", "model.py",
           'model.load_state_dict(clean_state_dict(ckpt["model"]))',
           'model.load_state_dict(clean_state_dict(ckpt["model"]), strict=False)',
           (f"{MECH}::test_checkpoint_weights_load_strictly",)),
    Mutant("checkpoint-loaded-with-pickle", "smallgpt/checkpoint.py",
           "ckpt = torch.load(path, map_location=device, weights_only=True)",
           "ckpt = torch.load(path, map_location=device, weights_only=False)",
           (f"{TRAIN}::test_malicious_checkpoint_is_refused_without_running_it",)),
    # ---------------------------------------------------------------- configurator
    Mutant("config-types-unchecked", "configurator.py",
           "    kind = type(default)\n",
           "    kind = type(default)\n    return value\n",
           ("tests/test_configurator.py",)),
    Mutant("int-not-converted-for-a-float-key", "configurator.py",
           "            return float(value)",
           "            return value",
           ("tests/test_configurator.py",)),
    Mutant("unknown-cli-keys-accepted", "configurator.py",
           "    if unknown:  # all of them at once, before any config file runs",
           "    if False:  # all of them at once, before any config file runs",
           ("tests/test_configurator.py",)),
    Mutant("unknown-config-file-keys-accepted", "configurator.py",
           "            if unknown:\n                fail(unknown_keys_message(unknown, keys, path), USAGE)",
           "            if False:\n                fail(unknown_keys_message(unknown, keys, path), USAGE)",
           ("tests/test_configurator.py",)),
    # ---------------------------------------------------------------- attention variants (#11)
    Mutant("rope-frequencies-doubled", "model.py",
           'dtype=torch.float32) / head_dim)',
           'dtype=torch.float32) / (head_dim // 2))',
           (VARIANTS,)),
    Mutant("window-pattern-inverted", "model.py",
           'pattern[layer % len(pattern)] == "S" else 0',
           'pattern[layer % len(pattern)] == "L" else 0',
           (VARIANTS,)),
    Mutant("ring-buffer-slots-off-by-one", "smallgpt/kvcache.py",
           "return (n - 1) - ((n - 1 - i) % cap)",
           "return (n - 1) - ((n - i) % cap)",
           (VARIANTS,)),
    Mutant("decode-band-one-token-wider", "smallgpt/kvcache.py",
           "band = min(attn_window or self.context_window, self.context_window)",
           "band = min(attn_window or self.context_window, self.context_window) + 1",
           (VARIANTS,)),
    Mutant("banded-reference-crops-instead", "smallgpt/generate.py",
           '    band = 0 if crop or model.config.attention == "linear" else context_window\n',
           "    band, crop = 0, True\n",
           (VARIANTS,)),
    Mutant("kv-share-groups-interleaved-in-the-cache", "model.py",
           'self.kv_slot = layer // config.kv_share',
           'self.kv_slot = layer % config.kv_share',
           (VARIANTS,)),
    # memory beyond the window (tests/test_memory.py)
    Mutant("sequential-rows-do-not-advance", "smallgpt/dataloader.py",
           "    k = step % windows\n", "    k = 0 if step < windows else step % windows\n",
           (SEQUENTIAL,)),
    Mutant("xl-memory-keeps-the-graph", "smallgpt/kvcache.py",
           "k[:, :, start:].detach(), v[:, :, start:].detach()",
           "k[:, :, start:], v[:, :, start:]",
           (XL_JOINT,)),
    Mutant("xl-queries-turned-at-the-memory-positions", "model.py",
           "cos[S - T:], sin[S - T:]", "cos[:T], sin[:T]",
           (XL_JOINT,)),
    Mutant("xl-memory-not-saved-for-resume", "smallgpt/runstate.py",
           "'xl_memory': [memory.state_dict() for memory in self.memories]", "'xl_memory': []",
           (XL_RESUME,)),
    Mutant("linear-attention-unnormalised", "smallgpt/linear_attention.py",
           "    y = (num / (den.unsqueeze(-1) + EPS))", "    y = (num / (1 + EPS))",
           (LINEAR_FORMS,)),
    Mutant("linear-decode-step-forgets-its-state", "smallgpt/linear_attention.py",
           "    S += k.float().transpose(-1, -2) @ v.float()", "    S = S + k.float().transpose(-1, -2) @ v.float()",
           (LINEAR_FORMS, LINEAR_DECODE)),
    Mutant("linear-state-takes-pad-keys", "smallgpt/kvcache.py",
           "            k, v = k * real, v * real\n", "            k, v = k, v\n",
           (LINEAR_GENERATE,)),
]

# ----------------------------------------------------------------------------- the copy

def copy_repo(target):
    """The files a fresh clone would have, plus untracked work not yet committed."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        source = REPO / rel
        if source.is_file():  # a tracked file deleted in the work tree is skipped
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)


def check_mutants(mutants, root):
    """Every snippet exactly once, every likely test file present: else the list is stale."""
    problems = []
    names = [m.name for m in mutants]
    problems += [f"duplicate name {n}" for n in sorted(set(n for n in names if names.count(n) > 1))]
    for m in mutants:
        path = root / m.file
        count = path.read_text(encoding="utf-8").count(m.old) if path.is_file() else 0
        if count != 1:
            problems.append(f"{m.name}: the snippet occurs {count} times in {m.file}")
        if m.old == m.new:
            problems.append(f"{m.name}: the replacement is the snippet itself")
        for test in m.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{m.name}: no test file {test.split('::')[0]}")
    return problems


def pytest(args, cwd, env, timeout, stop_at_first_failure=True):
    """(exit code, first failing test or '', output) of a fast-suite run."""
    command = [sys.executable, "-m", "pytest", *args, "-q", "-m", "not slow",
               "-p", "no:cacheprovider", *(["-x"] if stop_at_first_failure else [])]
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return -1, f"timed out after {timeout} s", (e.stdout or b"").decode(errors="replace")
    output = result.stdout + result.stderr
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    return result.returncode, failed.group(1) if failed else "", output


def run_mutant(mutant, copy, env, timeout, flaky=()):
    """('CAUGHT', 'SURVIVED' or 'FLAKY', detail). The file is restored whatever happens.
    Tests in `flaky` (they failed in the baseline, passed alone) are left out of the suite."""
    path = copy / mutant.file
    original = path.read_text(encoding="utf-8")
    mutated = original.replace(mutant.old, mutant.new, 1)
    path.write_text(mutated, encoding="utf-8")
    try:
        leave_out = [arg for test in flaky for arg in ("--deselect", test)]
        suite = ["tests", *leave_out]
        for stage in ([*mutant.tests, *leave_out], suite):
            code, failed, output = pytest(stage, copy, env, timeout)
            if code == 4:  # usage error: a node id that no longer exists
                raise SystemExit(f"{mutant.name}: pytest could not run {stage}:\n{output[-2000:]}")
            if code not in (0, 5):  # 5: nothing collected (e.g. only slow tests): not a pass
                break
        else:
            return "SURVIVED", "the whole fast suite passed"
        if stage == suite and "::" in failed:
            # not a likely test: it must fail again alone, and pass without the mutant
            again, _, _ = pytest([failed], copy, env, timeout)
            path.write_text(original, encoding="utf-8")
            control, _, _ = pytest([failed], copy, env, timeout)
            if again in (0, 5) or control != 0:
                return "FLAKY", f"{failed}: {again} with the mutant alone, {control} without"
        return "CAUGHT", f"by {failed or 'exit code ' + str(code)}"
    finally:
        path.write_text(original, encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run this mutant (repeatable; a prefix selects all that start with it)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", choices=("full", "likely", "none"), default="full",
                        help="what to run on the unmutated copy first (default: the fast suite)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = parser.parse_args()
    # Started in the background (`... &`, nohup), this process ignores SIGINT and so would every
    # test process, and tests that send SIGINT to a script would hang. A handler here is reset
    # to the default in each child, as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still restore files, remove the copy

    problems = check_mutants(MUTANTS, REPO)
    if problems:
        raise SystemExit("stale mutant list:\n  " + "\n  ".join(problems))
    chosen = [m for m in MUTANTS if not args.only or any(m.name.startswith(o) for o in args.only)]
    if args.only and len(chosen) == 0:
        raise SystemExit(f"no mutant matches {args.only}; --list shows them")
    if args.list:
        for m in chosen:
            print(f"{m.name:40} {m.file:16} {', '.join(m.tests)}")
        return 0

    work = Path(tempfile.mkdtemp(prefix="nanogpt-mutate-"))
    try:
        copy = work / "repo"  # work/ has no shared/: the tests find no offline data
        copy.mkdir()
        copy_repo(copy)
        for folder in ("empty-test-data", "empty-tiktoken-cache"):
            (work / folder).mkdir()
        env = dict(os.environ, NANOGPT_TEST_DATA=str(work / "empty-test-data"),
                   TIKTOKEN_CACHE_DIR=str(work / "empty-tiktoken-cache"), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
        print(f"copied {REPO} to {copy} (no offline data visible)", flush=True)

        started = time.time()
        flaky = []
        if args.baseline != "none":
            targets = ["tests"] if args.baseline == "full" else \
                list(dict.fromkeys(t for m in chosen for t in m.tests))
            t0 = time.time()
            code, _, output = pytest(targets, copy, env, args.timeout, stop_at_first_failure=False)
            summary = output.strip().splitlines()[-1] if output.strip() else ""
            print(f"baseline ({args.baseline}): {summary} [{time.time() - t0:.0f} s]", flush=True)
            failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
            if code != 0:  # a test that fails in the crowd but passes alone is flaky: go on
                flaky = [f for f in failures
                         if any(pytest([f], copy, env, args.timeout)[0] == 0 for _ in range(2))]
                broken = [f for f in failures if f not in flaky]
                if broken or not failures:
                    raise SystemExit(f"the unmutated copy fails ({', '.join(broken) or code}); "
                                     f"fix that first:\n{output[-3000:]}")
                print(f"warning: flaky, left out of the suite from now on (failed in it, passed "
                      f"alone): {', '.join(flaky)}", flush=True)

        survivors = []
        for m in chosen:
            t0 = time.time()
            verdict, detail = run_mutant(m, copy, env, args.timeout, flaky)
            print(f"{verdict:8} {time.time() - t0:6.1f} s  {m.name:40} {detail}", flush=True)
            if verdict != "CAUGHT":
                survivors.append(m.name)
        caught = len(chosen) - len(survivors)
        print(f"caught {caught} / tried {len(chosen)} in {time.time() - started:.0f} s"
              + (f"; survived: {', '.join(survivors)}" if survivors else ""))
        return 1 if survivors else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
