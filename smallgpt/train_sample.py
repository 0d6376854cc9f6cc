"""
Samples while training (train.py's sample_interval): every so many iterations, one short text
from one start text, printed and kept in out_dir/samples.txt (RunLog.sample). It shows what the
model has learned so far, the way GPTBench's log_sample_period does.

    sampler = TrainingSampler(data, start='', max_new_tokens=50, temperature=0.0, seed=1337,
                              device='cpu', ctx=nullcontext())
    text = sampler.sample(raw_model, iter_num)   # the start text and what follows it

The start text '' picks one: on a line dataset the question of the first val line (up to and with
its answer separator; the whole first line's first token when it has none), else a newline (or
val.bin's first token, for a character vocabulary without one). A line dataset's sample stops at
the end of its line.

The decoding is the model's own generate_stream (smallgpt/generate.py) with a torch.Generator of
its own, seeded by seed + iteration: a sample draws none of the run's random numbers, so a run
with samples trains exactly as one without, and resumes exactly.

What it is not: sample.py (many samples, stop strings, streaming to a terminal).
"""

import numpy as np
import torch

from smallgpt.errors import UserError
from smallgpt.generate import TextSample, decode_samples
from smallgpt.tokenizer import Tokenizer, encode_prompt


class TrainingSampler:

    def __init__(self, data, start, max_new_tokens, temperature, seed, device, ctx, sharded=False):
        if sharded:  # a sharded model's forward is collective: rank 0 can't decode alone
            raise UserError("sample_interval works with parallel='ddp' (or one process); under "
                            "'fsdp' leave it at 0 and sample the checkpoint with sample.py")
        if max_new_tokens < 1 or temperature < 0:
            raise UserError(f"sample_max_new_tokens={max_new_tokens}, sample_temperature="
                            f"{temperature}: give at least 1 token and a temperature >= 0 (0: greedy)")
        lines = data.lines
        self.tokenizer = lines.tokenizer if lines is not None else Tokenizer.from_meta(data.meta)
        self.start = start or default_start(data, self.tokenizer)
        try:
            self.ids = encode_prompt(self.tokenizer, self.start)
        except ValueError as e:
            raise UserError(f"sample_start={start!r}: {e}") from None
        if lines is not None:  # a line ends at its end-of-line token
            self.stop_ids = self.tokenizer.encode(data.meta['lines']['end_of_line'])
        else:
            self.stop_ids = [self.tokenizer.eot_token] if self.tokenizer.eot_token is not None else []
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.seed, self.device, self.ctx = seed, device, ctx

    def sample(self, model, iter_num):
        """The start text and up to max_new_tokens tokens after it, from `model` as it is now."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed + iter_num)
        text = TextSample(self.start, self.tokenizer, stop_ids=self.stop_ids)
        was_training = model.training
        model.eval()  # no dropout in a sample
        try:
            with self.ctx:
                stream = model.generate_stream([self.ids], self.max_new_tokens, self.temperature,
                                               generator=generator)
                for _ in decode_samples([text], stream):
                    pass
        finally:
            model.train(was_training)
        return self.start + text.text


def default_start(data, tokenizer):
    """The start text sample_start='' means (see the module docstring)."""
    if data.lines is not None:
        first = data.lines.lines('val', 1) or data.lines.lines('train', 1)
        separator = data.lines.separator
        if separator and separator in first[0]:
            return first[0][:first[0].index(separator) + len(separator)]
        return tokenizer.decode(tokenizer.encode(first[0])[:1])
    try:
        tokenizer.encode('\n')
        return '\n'
    except ValueError:  # a character vocabulary without a newline
        first = np.memmap(data.path('val'), dtype=data.token_dtype, mode='r')[:1]
        return tokenizer.decode([int(first[0])])
