"""
train.py's sample_interval (smallgpt/train_sample.py, RunLog.sample): samples while training,
printed and kept in out_dir/samples.txt.

    python -m pytest tests/test_train_sample.py -q

- the default start of a line dataset is its first val line's question, and the sample is the
  greedy continuation a plain argmax loop (a full forward per token, written here) gives from the
  saved weights, cut at the end of the line;
- a run with samples (temperature 1, dropout on) trains bit for bit as the same run without;
- a start text outside the vocabulary is one line and the run writes no log or checkpoint;
- a new run keeps an earlier samples.txt aside.
"""

import os

import torch
from conftest import error_lines, run_train

from model import GPT
from smallgpt.lines import prepare_lines
from smallgpt.runlog import RunLog
from smallgpt.tokenizer import Tokenizer

# 60 sums: with val_fraction 0.25 and no shuffle, the first val line is the 46th
SUMS = [f"{a}+{b}={a + b}" for a in range(6, 12) for b in range(10)]


def line_dataset(tmp_path):
    folder = tmp_path / 'sums'
    prepare_lines(str(folder), list(enumerate(SUMS, 1)), source='sums.txt', answer_separator='=',
                  val_fraction=0.25, test_fraction=0.0)
    return folder


def entries(out_dir):
    """samples.txt as {iteration: text}."""
    text = (out_dir / 'samples.txt').read_text(encoding='utf-8')
    found = {}
    for block in text.split('--- iteration ')[1:]:
        number, _, sample = block.partition('\n')
        found[int(number)] = sample.removesuffix('\n')
    return found


def greedy_reference(model, tokenizer, start, end_of_line, max_new_tokens):
    """Argmax of a full forward, one token at a time: no KV cache, no generate()."""
    ids = tokenizer.encode(start)
    eol = tokenizer.encode(end_of_line)[0]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([ids[-model.config.block_size:]]))
            token = int(logits[0, -1].argmax())
            if token == eol:
                break
            ids.append(token)
    return tokenizer.decode(ids)


def test_line_dataset_samples_are_the_greedy_answer_to_the_first_val_question(tmp_path):
    data = line_dataset(tmp_path)
    out = tmp_path / 'out'
    done = run_train(data, out, '--max_iters=12', '--eval_interval=6', '--sample_interval=6',
                     '--block_size=16', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    question = SUMS[45].split('=')[0] + '='  # '10+5=': independent of the code's own choice
    samples = entries(out)
    assert sorted(samples) == [6, 12]
    assert all(text.startswith(question) for text in samples.values()), samples
    printed = [line for line in done.stdout.splitlines() if line.startswith('sample at iteration')]
    assert printed == [f"sample at iteration {i}: {samples[i]}" for i in (6, 12)]
    # last.pt holds the weights of iteration 12, the ones the last sample came from
    ckpt = torch.load(out / 'last.pt', weights_only=False)
    model = GPT.from_checkpoint(ckpt)
    model.eval()
    tokenizer = Tokenizer.from_meta(ckpt['meta'])
    assert samples[12] == greedy_reference(model, tokenizer, question, '\n', 50)


def test_samples_draw_none_of_the_runs_random_numbers(tmp_path, char_dataset):
    """Temperature 1 and dropout 0.1: a sample that used the run's random streams would change
    the next dropout masks (or batches), and the weights would differ."""
    common = ['--max_iters=9', '--eval_interval=9', '--dropout=0.1', '--seed=7']
    plain = run_train(char_dataset, tmp_path / 'plain', *common, cwd=tmp_path)
    sampled = run_train(char_dataset, tmp_path / 'sampled', *common, '--sample_interval=3',
                        '--sample_temperature=1.0', '--sample_max_new_tokens=20', cwd=tmp_path)
    assert plain.returncode == 0 and sampled.returncode == 0, plain.stderr + sampled.stderr
    samples = entries(tmp_path / 'sampled')
    assert sorted(samples) == [3, 6, 9]
    # a text dataset starts from a newline; 20 tokens of a char model are 20 characters
    assert all(text.startswith('\n') and len(text) == 21 for text in samples.values()), samples
    assert not (tmp_path / 'plain' / 'samples.txt').exists()
    a = torch.load(tmp_path / 'plain' / 'last.pt', weights_only=False)['model']
    b = torch.load(tmp_path / 'sampled' / 'last.pt', weights_only=False)['model']
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_start_text_outside_the_vocabulary_is_one_line(tmp_path, char_dataset):
    out = tmp_path / 'out'
    done = run_train(char_dataset, out, '--max_iters=4', '--sample_interval=2',
                     '--sample_start=€uro', cwd=tmp_path)
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and 'sample_start' in lines[0] and "'€'" in lines[0], lines
    # the run lock (taken before the model is built) and nothing else: no log, no checkpoint
    assert set(os.listdir(out)) <= {'run.lock'}


def test_a_new_run_keeps_the_earlier_samples_aside(tmp_path):
    first = RunLog(str(tmp_path), {}, plot=False)
    first.train(1, 2.0, 1e-3, 10.0, 100.0, None)
    first.sample(1, 'first run')
    first.close()
    second = RunLog(str(tmp_path), {}, plot=False)
    second.sample(5, 'second run')
    second.close()
    assert (tmp_path / 'samples.1.txt').read_text() == '--- iteration 1\nfirst run\n'
    assert (tmp_path / 'samples.txt').read_text() == '--- iteration 5\nsecond run\n'
    assert (tmp_path / 'log.1.csv').exists()
    resumed = RunLog(str(tmp_path), {}, resume_iter=5, plot=False)
    resumed.sample(6, 'resumed')
    resumed.close()
    assert (tmp_path / 'samples.txt').read_text().endswith('--- iteration 6\nresumed\n')
