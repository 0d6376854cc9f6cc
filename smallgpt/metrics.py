"""
metrics.py: how well a model predicts a text, and how often it answers a line exactly right.

eval.py is the command line over it; train.py calls line_accuracy for eval_accuracy; from Python:

    from smallgpt.metrics import evaluate_tokens, evaluate_lines, line_accuracy, token_byte_lengths
    result = evaluate_tokens(model, ids, byte_lengths=token_byte_lengths(tokenizer))
    result['loss'], result['perplexity'], result['bits_per_byte'], result['tokens']
    line_accuracy(model, tokenizer, ['12+34=46', '9+9=18'], '=')['accuracy']

How the numbers are counted:
- loss: the cross-entropy (nats) summed over every scored token, divided by their number (a
  short last window weighs what its tokens weigh); perplexity = exp(loss).
- bits_per_byte: the same sum in bits, divided by the UTF-8 bytes of the scored tokens. Each
  token counts the bytes it decodes to: a character its 1-4 UTF-8 bytes, a GPT-2 token its byte
  string, <|endoftext|> none (it is not text). A char model and a BPE model scored on the same
  text thus divide by the bytes of that text (less the first token's, which nothing predicts),
  so their bits per byte compare where their losses per token don't.
- accuracy (line datasets): a line counts as right when the greedy continuation of everything
  up to and including the answer separator is the line's answer followed by the end of line.

What it is not: loading models or data (checkpoint.py, prepare.py, lines.py).
"""

import math
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from smallgpt.generate import teacher_forced
from smallgpt.kvcache import KVCache, XLMemory


def _bar(iterable, progress, desc, total=None):
    """A tqdm bar on stderr when progress is on (stdout stays for results, e.g. eval.py --json)
    and stderr is a terminal (disable=None: a redirected log gets no \r-rewritten lines)."""
    if not progress:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None)


def token_byte_lengths(tokenizer, vocab_size=None):
    """(vocab_size,) int64: the UTF-8 bytes each token id stands for (0 for <|endoftext|> and
    for ids past the tokenizer's, which a padded model vocabulary has but never predicts)."""
    lengths = np.zeros(max(vocab_size or 0, tokenizer.vocab_size), dtype=np.int64)
    for i in range(tokenizer.vocab_size):
        lengths[i] = len(tokenizer.decode_bytes([i]))
    if tokenizer.eot_token is not None:
        lengths[tokenizer.eot_token] = 0
    return lengths


def summarize(nll_sum, tokens, n_bytes):
    """The result dict from summed cross-entropy (nats), scored tokens and their bytes."""
    assert tokens > 0, "nothing was scored"
    loss = nll_sum / tokens
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "bits_per_byte": nll_sum / math.log(2) / n_bytes if n_bytes else float("nan"),
            "tokens": int(tokens), "bytes": int(n_bytes)}


def sliding_windows(n_tokens, block_size, stride):
    """[(start, length, skip)] over a text of n_tokens, in order. A window feeds tokens start ..
    start + length - 1, each predicting the token after it; the first `skip` of those
    predictions were scored by an earlier window, so each of the n_tokens - 1 predictions is
    scored exactly once. stride == block_size: windows side by side, a token sees 0 to
    block_size - 1 tokens back. A smaller stride: every window after the first scores only its
    last `stride` predictions, each with at least block_size - stride tokens of context."""
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride={stride} must be in [1, block_size={block_size}]: a longer "
                         f"stride would skip tokens")
    windows, scored, start = [], 0, 0  # predictions 0 .. scored - 1 are done (i predicts i + 1)
    while scored < n_tokens - 1:
        end = min(start + block_size, n_tokens - 1)
        windows.append((start, end - start, scored - start))
        scored, start = end, start + stride
    return windows


def _score(model, x, y, byte_lengths, ctx):
    """Summed cross-entropy (nats), scored tokens and their bytes of one (B, T) batch; y = -1 is
    not scored."""
    device = model.lm_head.weight.device
    x, y = torch.as_tensor(x).to(device), torch.as_tensor(y).to(device)
    cfg, cache = model.config, None
    if x.size(1) > cfg.block_size and cfg.pos_emb != "learned" and cfg.attention != "linear":
        cache = KVCache.for_model(cfg, x.size(0), x.size(1))  # rope/none past block_size: all of it
    with ctx:
        logits, _ = model(x, all_logits=True, cache=cache)  # (B, T, V)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                          ignore_index=-1, reduction="sum")
    scored = y[y >= 0].cpu().numpy()
    n_bytes = int(byte_lengths[scored].sum()) if byte_lengths is not None else 0
    return nll.item(), len(scored), n_bytes


@torch.no_grad()
def evaluate_tokens(model, ids, block_size=None, stride=None, batch_size=8, byte_lengths=None,
                    ctx=nullcontext(), progress=False, max_windows=0):
    """Loss, perplexity, bits per byte and token count of a model over a whole token sequence
    (a list, array or memmap), in order, in sliding_windows. max_windows > 0 stops early."""
    block_size = block_size or model.config.block_size
    windows = sliding_windows(len(ids), block_size, stride or block_size)
    if max_windows:
        windows = windows[:max_windows]
    nll, tokens, n_bytes = 0.0, 0, 0
    batches = range(0, len(windows), batch_size)
    for b in _bar(batches, progress, "eval", total=len(batches)):
        batch = windows[b:b + batch_size]
        T = max(length for _, length, _ in batch)
        x = np.zeros((len(batch), T), dtype=np.int64)  # pad inputs sit after every real one
        y = np.full((len(batch), T), -1, dtype=np.int64)
        for row, (start, length, skip) in enumerate(batch):
            chunk = np.asarray(ids[start:start + length + 1], dtype=np.int64)
            x[row, :length] = chunk[:-1]
            y[row, skip:length] = chunk[1 + skip:]
        batch_nll, batch_tokens, batch_bytes = _score(model, x, y, byte_lengths, ctx)
        nll, tokens, n_bytes = nll + batch_nll, tokens + batch_tokens, n_bytes + batch_bytes
    return summarize(nll, tokens, n_bytes)


@torch.no_grad()
def evaluate_lines(model, line_data, split, batch_size=64, byte_lengths=None, ctx=nullcontext(),
                   progress=False):
    """Loss etc. of a model over every line of a line dataset's split, in order: one window per
    line with the targets training used (line_data.set_targets: all, or the answers)."""
    lines = line_data[split]
    nll, tokens, n_bytes = 0.0, 0, 0
    batches = range(0, len(lines), batch_size)
    for b in _bar(batches, progress, f"eval {split} lines", total=len(batches)):
        indices = list(range(b, min(b + batch_size, len(lines))))
        T = int(lines.lengths[indices].max())
        x, y = lines.batch(indices, T, line_data.answer_only)
        batch_nll, batch_tokens, batch_bytes = _score(model, x, y, byte_lengths, ctx)
        nll, tokens, n_bytes = nll + batch_nll, tokens + batch_tokens, n_bytes + batch_bytes
    return summarize(nll, tokens, n_bytes)


# ----------------------------------------------------------------------------------------------
# loss by position: what a model makes of tokens further back than it trained on


def spread_starts(n_tokens, length, n_sequences):
    """Starts of up to n_sequences windows of `length` + 1 tokens, evenly spread over the text."""
    if n_tokens < length + 1:
        raise ValueError(f"the text has {n_tokens:,} tokens, fewer than the {length + 1:,} one "
                         f"sequence of by_position_length={length} needs; use a shorter one")
    last = n_tokens - length - 1
    return sorted(set(np.linspace(0, last, n_sequences).round().astype(int).tolist()))


@torch.no_grad()
def loss_by_position(model, ids, length, n_sequences=16, batch_size=8, ctx=nullcontext(),
                     context_window=0, kv_sink=0, kv_budget=0, xl_memory=0, progress=False):
    """Mean cross-entropy (nats) at each position of n_sequences windows of `length` tokens
    evenly spread over ids: (length - 1,) numpy, entry i the loss of predicting token i + 1
    from tokens 0..i, which may run far past block_size. Tokens go in as the sampler feeds them
    (generate.teacher_forced), so each policy is what sample.py would do with it:
    context_window 0 = block_size (rope/none: a band of that many tokens at every layer;
    learned: nanoGPT's crop), -1 = every earlier token (rope/none), N = a band of N; kv_sink
    keeps the first tokens in the cache, kv_budget the most attended. xl_memory > 0 instead
    runs the text in segments of block_size with a TransformerXL memory of that many tokens,
    as a model trained with it was trained."""
    starts = spread_starts(len(ids), length, n_sequences)
    cfg = model.config
    # one forward when no token ever leaves the context (any model), or a rope/none softmax
    # model whose band or cache a forward can apply; else the decode loop
    fits = length - 1 <= cfg.block_size and (context_window <= 0 or context_window >= length - 1)
    one_forward = not kv_sink and not kv_budget and (fits or (
        cfg.pos_emb != "learned" and cfg.attention == "softmax" and context_window >= -1))
    total, rows = np.zeros(length - 1), 0
    device = model.lm_head.weight.device
    batches = range(0, len(starts), batch_size)
    for b in _bar(batches, progress, "by position", total=len(batches)):
        seqs = torch.tensor(np.stack([np.asarray(ids[s:s + length], dtype=np.int64)
                                      for s in starts[b:b + batch_size]]), device=device)  # (B, L)
        with ctx:
            if xl_memory:
                nll = _xl_losses(model, seqs, xl_memory)
            elif one_forward:  # the same numbers as the decode loop, in one pass (tests say so)
                nll = _forward_losses(model, seqs, context_window)
            else:
                nll, _ = teacher_forced(model, seqs, context_window or None, kv_budget=kv_budget,
                                        kv_sink=kv_sink, per_position=True)
        total += nll.double().sum(0).cpu().numpy()
        rows += seqs.size(0)
    return total / rows


def _forward_losses(model, seqs, context_window):
    """(B, L - 1) cross-entropies over seqs in one forward of its first L - 1 tokens (the last is
    only a target): every layer sees its last context_window tokens (a band), or all of them
    (-1), through a cache of that many slots when that is longer than block_size (a forward
    alone stops there; rope/none models only)."""
    x, y = seqs[:, :-1], seqs[:, 1:]
    B, T = x.shape
    window = T if context_window == -1 else context_window or model.config.block_size
    if min(window, T) <= model.config.block_size:
        logits, _ = model(x, all_logits=True, band=window if window < T else 0)
    else:
        logits, _ = model(x, all_logits=True, cache=KVCache.for_model(model.config, B, window))
    return F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")


def _xl_losses(model, seqs, xl_memory):
    """(B, L - 1) cross-entropies of seqs run in segments of block_size with an XLMemory."""
    memory, T, losses = XLMemory(xl_memory), model.config.block_size, []
    for start in range(0, seqs.size(1) - 1, T):
        x = seqs[:, start:start + T]
        y = seqs[:, start + 1:start + T + 1]
        logits, _ = model(x, all_logits=True, memory=memory)
        x_scored = logits[:, :y.size(1)]  # the last segment's final token has no target
        losses.append(F.cross_entropy(x_scored.float().transpose(1, 2), y, reduction="none"))
    return torch.cat(losses, dim=1)


def write_by_position(curves, block_size, path_prefix, title="", smooth=1):
    """curves {label: (L - 1,) losses}: PATH_PREFIX.csv (position, one column per label) and
    PATH_PREFIX.png (loss against position, block_size marked; with smooth > 1 each point the
    mean of the `smooth` positions up to it, the CSV unsmoothed); returns both paths."""
    labels = list(curves)
    n = max(len(c) for c in curves.values())
    with open(path_prefix + ".csv", "w", encoding="utf-8") as f:
        f.write(",".join(["position"] + [label.replace(",", ";") for label in labels]) + "\n")
        for i in range(n):
            f.write(",".join([str(i)] + [f"{curves[k][i]:.6f}" if i < len(curves[k]) else ""
                                         for k in labels]) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in labels:
        y = np.asarray(curves[label])
        if smooth > 1:  # a trailing mean: position i shows positions i - smooth + 1 .. i
            y = np.convolve(y, np.ones(smooth) / smooth)[:len(y)]
            y[:smooth - 1] = np.nan  # fewer than `smooth` positions there: left out
        ax.plot(np.arange(len(y)), y, label=label, linewidth=1.2)
    ax.axvline(block_size, color="grey", linestyle="--", linewidth=1)
    ax.text(block_size, ax.get_ylim()[0], f" block_size={block_size}", va="bottom", color="grey")
    ax.set_xlabel("position in the sequence (tokens of context before the prediction)")
    ax.set_ylabel("mean loss (nats per token)" + (f", mean of {smooth} positions" if smooth > 1 else ""))
    ax.set_title(title or "loss by position")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path_prefix + ".png", dpi=110)
    plt.close(fig)
    return path_prefix + ".csv", path_prefix + ".png"


# ----------------------------------------------------------------------------------------------
# accuracy


def split_answer(line, separator):
    """('12+34=', '46') for '12+34=46' and '=': the prompt ends with the first separator."""
    at = line.find(separator)
    if not separator or at < 0:
        raise ValueError(f"line {line!r} has no answer separator {separator!r}")
    return line[:at + len(separator)], line[at + len(separator):]


def score_answers(expected, predicted):
    """[right or wrong] per line: exact match; None (no end of line in time) is wrong."""
    return [p is not None and p == e for e, p in zip(expected, predicted, strict=True)]


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts, budgets, stop_id, batch_size=256, ctx=nullcontext(),
                   progress=False):
    """The greedy continuation of each prompt up to (not including) stop_id, decoded; None when
    stop_id did not come within budgets[i] tokens. One batch of prompts at a time through the
    KV cache (model.generate_stream, rows of different lengths left-padded); a batch ends once
    every row has stopped or used its budget."""
    answers = []
    batches = range(0, len(prompts), batch_size)
    for b in _bar(batches, progress, "accuracy", total=len(batches)):
        rows = [tokenizer.encode(p) for p in prompts[b:b + batch_size]]
        budget = budgets[b:b + batch_size]
        generated = [[] for _ in rows]
        done = [False] * len(rows)
        stream = model.generate_stream(rows, max(budget), temperature=0.0)
        try:
            with ctx:
                for step, tokens in enumerate(stream):
                    for i, token in enumerate(tokens.tolist()):
                        if done[i]:
                            continue
                        if token == stop_id:
                            done[i] = True
                        elif step + 1 >= budget[i]:
                            generated[i] = None  # used its budget without ending the line
                            done[i] = True
                        else:
                            generated[i].append(token)
                    if all(done):
                        break
        finally:
            stream.close()
        answers += [None if g is None or not d else tokenizer.decode(g)
                    for g, d in zip(generated, done)]
    return answers


def line_accuracy(model, tokenizer, lines, separator, stop_text="\n", batch_size=256,
                  ctx=nullcontext(), progress=False):
    """Exact-match accuracy of greedy answers on `lines` (text without the end of line):
    {'accuracy', 'correct', 'lines', 'predictions'}. Each line is prompted up to its separator;
    it may generate its answer's length plus one token: the end of line, or else the answer is
    longer than the right one and wrong whatever would follow."""
    if not lines:
        raise ValueError("no lines to measure accuracy on")
    prompts, expected = zip(*(split_answer(line, separator) for line in lines))
    budgets = [len(tokenizer.encode(answer)) + 1 for answer in expected]
    stop_id = tokenizer.encode(stop_text)[0]
    was_training = model.training
    model.eval()
    try:
        predicted = greedy_answers(model, tokenizer, list(prompts), budgets, stop_id, batch_size,
                                   ctx, progress)
    finally:
        model.train(was_training)
    right = score_answers(expected, predicted)
    return {"accuracy": sum(right) / len(right), "correct": sum(right), "lines": len(right),
            "predictions": predicted}
