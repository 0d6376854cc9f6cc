"""
The Python API (workbench.py) against the scripts it stands for, and the example notebook run
headlessly in a real Jupyter kernel. One tiny addition run is trained through the API and shared
by the tests. About a minute on one CPU core.

    python -m pytest tests/test_api.py -v
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, has_image, run_notebook

import workbench as wb  # noqa: E402  (conftest puts the repo on sys.path)
from smallgpt.lines import LineDataset  # noqa: E402
from smallgpt.runlog import read_log  # noqa: E402
from smallgpt.dataloader import load_meta  # noqa: E402

TINY_ADD = dict(device='cpu', compile=False, dtype='float32', peak_flops=1e12, n_layer=1,
                n_head=2, n_embd=32, batch_size=32, max_iters=40, lr_decay_iters=40,
                warmup_iters=0, eval_interval=20, eval_iters=2, eval_accuracy=20, log_interval=10)


@pytest.fixture(scope="module")
def add_run(tmp_path_factory):
    """The addition task prepared into a temp folder and a tiny run trained on it via the API,
    with the rows its on_row callback saw while it ran."""
    tmp = tmp_path_factory.mktemp("api")
    data_dir = wb.prepare('add', digits=1, dataset=str(tmp / 'add1'))  # 100 sums: seconds
    seen = []
    run = wb.train('config/train_add.py', cwd=str(tmp), out_dir='out', dataset=data_dir,
                   on_row=seen.append, **TINY_ADD)
    return tmp, data_dir, run, seen


def script(name, out_dir, *args):
    done = subprocess.run([sys.executable, str(REPO / name), f"--out_dir={out_dir}",
                           "--device=cpu", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_returns_the_rows_of_log_csv(add_run):
    tmp, _, run, seen = add_run
    assert run.out_dir == str(tmp / 'out')
    assert list(run) == read_log(tmp / 'out' / 'log.csv')
    assert seen == list(run)  # the callback saw every row, once, in order
    iters, _ = run.column('loss', kind='train')
    assert iters == [10, 20, 30, 40]
    eval_iters, accuracy = run.column('accuracy')
    assert eval_iters == [0, 20, 40] and all(0 <= a <= 1 for a in accuracy)


def test_a_failed_run_raises_one_line_with_train_py_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"train\.py failed .*lerning_rate") as info:
        wb.train(cwd=str(tmp_path), lerning_rate=1e-3)
    assert '\n' not in str(info.value)
    with pytest.raises(RuntimeError, match=r"train\.py failed .*no train\.bin"):
        wb.train(cwd=str(tmp_path), dataset=str(tmp_path / 'nothing_here'), device='cpu')


def test_generate_is_sample_py(add_run):
    """Same seed and settings: the same samples as sample.py prints, batch of prompts included."""
    tmp, _, run, _ = add_run
    printed = script("sample.py", run.out_dir, "--start=1+2=|9+9=", "--num_samples=3",
                     "--temperature=1.5", "--top_k=0", "--seed=7", "--max_new_tokens=6")
    from_script = [s.strip('\n') for s in printed.split('---------------') if s.strip()]
    m = wb.load(run.out_dir)
    texts = m.generate(['1+2=', '9+9='], num_samples=3, temperature=1.5, top_k=0, seed=7,
                       max_new_tokens=6)
    assert [p + t for p, t in zip(['1+2='] * 3 + ['9+9='] * 3, texts)] == from_script
    assert len(set(texts)) > 1, texts  # sampled, not greedy: the comparison means something


def test_stream_stop_and_a_single_prompt(add_run):
    _, _, run, _ = add_run
    m = wb.load(run.out_dir)
    whole = m.generate('3', temperature=0, max_new_tokens=4, stop_at_line_end=False)
    assert isinstance(whole, str) and len(whole) == 4  # a character model: one token each
    pieces = list(m.generate('3', temperature=0, max_new_tokens=4, stop_at_line_end=False,
                             stream=True))
    assert ''.join(pieces) == whole
    stop = whole[-2:]
    cut = m.generate('3', temperature=0, max_new_tokens=4, stop_at_line_end=False, stop=stop)
    assert cut == whole[:whole.index(stop)] and len(cut) < len(whole)
    with pytest.raises(ValueError, match="stream=True streams one sample"):
        m.generate(['1', '2'], stream=True)
    with pytest.raises(ValueError, match="top_p must be"):
        m.generate('1', top_p=0)


def test_prompt_is_the_interactive_loop(add_run, monkeypatch, capsys):
    """m.prompt() reads prompts and /commands as sample.py --interactive=True does."""
    _, _, run, _ = add_run
    m = wb.load(run.out_dir)
    typed = iter(['/temperature 0', '/max_new_tokens 3', '1+2=', '/quit'])
    monkeypatch.setattr('builtins.input', lambda prompt='': next(typed))
    m.prompt()
    shown = capsys.readouterr().out
    answer = m.generate('1+2=', temperature=0, max_new_tokens=3)
    assert 'temperature = 0.0' in shown and f"1+2={answer}\n" in shown, shown


def test_evaluate_is_eval_py(add_run):
    _, data_dir, run, _ = add_run
    printed = script("eval.py", run.out_dir, f"--dataset={data_dir}", "--split=test", "--json=True")
    expected = json.loads(printed)
    got = wb.load(run.out_dir).evaluate(dataset=data_dir, split='test')
    assert set(got) == set(expected)
    for key in ('tokens', 'bytes', 'loss_on', 'correct'):
        assert got[key] == expected[key], key
    for key in ('loss', 'perplexity', 'bits_per_byte', 'accuracy'):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_evaluate_a_text_file_is_eval_py(add_run):
    tmp, _, run, _ = add_run
    text = tmp / 'sums.txt'
    text.write_text("1+2=3\n4+4=8\n9+9=18\n" * 5)
    expected = json.loads(script("eval.py", run.out_dir, f"--text={text}", "--json=True",
                                 "--stride=4", "--block_size=8"))
    got = wb.load(run.out_dir).evaluate(text=str(text), stride=4, block_size=8)
    assert got['tokens'] == expected['tokens'] and got['stride'] == 4
    assert got['loss'] == pytest.approx(expected['loss'], rel=1e-5)


def test_accuracy_counts_the_predictions(add_run):
    _, data_dir, run, _ = add_run
    m = wb.load(run.out_dir)
    result = m.accuracy(count=7)  # the run's own dataset, test split
    assert result['lines'] == 7 and len(result['predictions']) == 7
    test_lines = LineDataset(data_dir, load_meta(data_dir), ('test',)).lines('test', 7)
    expected = []
    for line in test_lines:  # greedy, line by line; an answer may use its length + 1 tokens
        question, answer = line.split('=')
        budget = len(answer) + 1  # one token per character, the end of line included
        text = m.generate(question + '=', temperature=0, max_new_tokens=budget)
        expected.append(text if len(text) < budget else None)  # no end of line in time: wrong
    assert result['predictions'] == expected
    assert result['correct'] == sum(e == line.split('=')[1] for e, line in zip(expected, test_lines))


@pytest.mark.slow
def test_pip_install_gives_the_package_and_the_api_and_no_generic_names(tmp_path):
    """A real `pip install -e .` (into a venv that sees this Python's packages, --no-deps): from
    another folder the API, the package and the GPTBench adapter import (and python -m
    gptbench.run answers), and none of the old flat module names does."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "-e", str(REPO)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    check = """
import importlib.util, workbench, smallgpt.generate, smallgpt.hf.convert, gptbench
print(workbench.load.__module__, smallgpt.__file__)
print("gptbench", gptbench.__file__, gptbench.Train.__name__, gptbench.config_run.__name__)
flat = ["engine", "runtime", "checkpoint", "textdata", "linedata", "evaluation", "runlog",
        "interactive", "hf_gpt2", "hf_starcoder2", "linear_attention", "distributed"]
print("found:", [n for n in flat if importlib.util.find_spec(n)])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", check], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"workbench {REPO / 'smallgpt' / '__init__.py'}" in out.stdout, out.stdout
    assert "found: []" in out.stdout, out.stdout
    assert f"gptbench {REPO / 'gptbench' / '__init__.py'} Train config_run" in out.stdout, out.stdout
    run = subprocess.run([str(python), "-m", "gptbench.run"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: give -init="), run.stderr


def test_the_example_notebook_runs(tmp_path):
    """examples/workbench.ipynb end to end in a real kernel, writing only into tmp_path."""
    notebook, outputs = run_notebook("workbench.ipynb", tmp_path,
                                     WORKBENCH_DATASET=str(tmp_path / "add"), WORKBENCH_OUT_DIR="out")
    assert "test accuracy" in outputs and "val loss" in outputs, outputs
    assert has_image(notebook)  # the loss plot
    assert len(read_log(tmp_path / 'out' / 'log.csv')) > 0
