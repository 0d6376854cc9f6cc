"""
The gptbench package (docs/gptbench.md): GPTBench's documented snippets run as written, its
notebook style runs in a real kernel, every setting reaches train.py with GPTBench's meaning,
and a mistake is one line. Offline: a tiny random GPT-2 in a temporary Hugging Face cache stands
in for the downloaded 'gpt2' weights; GPTBENCH_SMOKE caps the iterations of snippets that would
train for hours (GPTBench's own numbers are docs/gptbench.md's measurements, not these tests').

    OMP_NUM_THREADS=1 python -m pytest tests/test_gptbench.py -v        # add -m "not slow" to skip
                                                                        # the long subprocess runs
"""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import tomllib

import pytest
import torch

from conftest import REPO, make_text, run_notebook, run_script, script_env

from gptbench import GPTBenchError, LogFlag, Sample, Train, config_run, empty_config
import gptbench.bench
import gptbench.training
from gptbench import data
from gptbench.bench import top_filter
from smallgpt.metrics import line_accuracy
from smallgpt.runlog import read_log

SEED = 7


def add_lines(digits=1):
    """Every 'a+b=c' with a, b below 10**digits, in order (GPTBench's add2.txt has digits=2)."""
    n = 10 ** digits
    return [f"{a}+{b}={a + b}" for a in range(n) for b in range(n)]


def write_lines(path, lines):
    path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
    return str(path)


def tiny_config(**trainer):
    cfg = empty_config()
    cfg.model.set(n_layer=1, n_head=2, n_embd=32, block_size=8, device='cpu')
    cfg.trainer.set(batch_size=32, learning_rate=3e-3, **trainer)
    cfg.train.set(eval_period=10, eval_iters=2)
    cfg.sample.set(top=1)
    return cfg


def new_bench(tmp, name, train_split=0.8, pre_shuffle=True, **trainer):
    ben = Train(name, work_dir=str(tmp / 'checkpoints'), seed=SEED)
    ben.set_datasets(class_name='charline', train_path=write_lines(tmp / 'add1.txt', add_lines()),
                     train_split=train_split, pre_shuffle=pre_shuffle)
    with contextlib.redirect_stdout(io.StringIO()):
        ben.init_new(tiny_config(**trainer))
    return ben


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """One tiny charline run of 1-digit sums, trained by two train(iter_count=20) calls, with a
    sample every 15 iterations; the output of the second call is kept."""
    tmp = tmp_path_factory.mktemp('gptbench')
    ben = new_bench(tmp, 'add1')
    ben.set_train_log_periods(dot_period=1, loss_period=0, sample_period=15)  # as GPTBench's notebooks do
    with contextlib.redirect_stdout(io.StringIO()):
        ben.train(iter_count=20)
    first_state = dict(ben.state)
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        ben.train(iter_count=20)
    return tmp, ben, first_state, shown.getvalue()


# ----------------------------------------------------------------------------- training
def test_train_twice_continues_exactly_where_it_stopped(run):
    """train(20) twice = train(40) once: the same weights, bit for bit, and the same losses
    (and the samples the first took while training, which the second did not, changed nothing)."""
    tmp, ben, first_state, _ = run
    assert first_state['iter_num'] == 20 and ben.state['iter_num'] == 40
    once = new_bench(tmp, 'add1_once')
    with contextlib.redirect_stdout(io.StringIO()):
        once.train(iter_count=40)
    twice_ckpt = torch.load(os.path.join(ben.path, 'last.pt'), weights_only=True)
    once_ckpt = torch.load(os.path.join(once.path, 'last.pt'), weights_only=True)
    assert twice_ckpt['iter_num'] == once_ckpt['iter_num'] == 40
    for key, tensor in once_ckpt['model'].items():
        assert torch.equal(tensor, twice_ckpt['model'][key]), key
    # the second train() marks where it resumed with a 'resume' row; the numbers are the same
    losses = lambda bench: [(r['iter'], r['loss'], r['val_loss']) for r in  # noqa: E731
                            read_log(os.path.join(bench.path, 'log.csv')) if r['kind'] != 'resume']
    assert losses(ben) == losses(once)
    assert [r['iter'] for r in read_log(os.path.join(ben.path, 'log.csv'))
            if r['kind'] == 'resume'] == [20]


def test_settings_reach_train_py_with_gptbench_meanings(run):
    """What train.py ran with (the checkpoint's config), against GPTBench's documented meaning
    of each setting: a constant learning rate, AdamW betas and decay, clipping, minGPT's biases,
    dropout 0.1 by default, evaluation every eval_period batches of eval_iters each."""
    _, ben, _, _ = run
    ran = torch.load(os.path.join(ben.path, 'last.pt'), weights_only=True)['config']
    expected = dict(learning_rate=3e-3, decay_lr=False, warmup_iters=0, beta1=0.9, beta2=0.95,
                    weight_decay=0.1, grad_clip=1.0, batch_size=32, gradient_accumulation_steps=1,
                    n_layer=1, n_head=2, n_embd=32, block_size=8, dropout=0.1, bias=True,
                    eval_interval=10, eval_iters=2, always_save_checkpoint=False, max_iters=40,
                    seed=SEED, dtype='float32', device='cpu', init_from='resume')
    assert {k: ran[k] for k in expected} == expected
    assert 'transformer.h.0.attn.c_attn.bias' in ben.model.state_dict()  # minGPT has biases


def test_training_output_is_gptbench_style(run):
    _, _, _, shown = run
    assert '\nIter 40 (' in shown and 'epoch): loss train=' in shown, shown
    assert '==> Saving model at iter=' in shown and '.' * 5 in shown, shown
    assert 'Overriding' not in shown and 'tokens per iteration' not in shown, shown


def test_state_and_last_saved_state_come_from_the_log(run):
    _, ben, _, _ = run
    rows = [r for r in read_log(os.path.join(ben.path, 'log.csv')) if r['kind'] == 'eval']
    assert ben.state['train_loss'] == rows[-1]['train_loss'] and rows[-1]['iter'] == 40
    assert ben.state['val_loss'] == ben.state['eval_loss'] == rows[-1]['val_loss']  # eval_type 1
    assert ben.state['n_samples'] == 40 * 32
    best = min(rows[1:], key=lambda r: r['val_loss'])  # iteration 0 is never saved
    assert ben.last_saved_state['iter_num'] == best['iter']


def test_load_reads_the_best_checkpoint_and_sample_py_reads_it_too(run):
    """load() is ckpt.pt, an ordinary checkpoint: sample.py greedy gives the same answer."""
    tmp, ben, _, _ = run
    reader = Sample('add1', work_dir=ben.work_dir, log_mask=LogFlag.NONE)
    assert reader.can_load() and not reader.can_load('nothing')
    reader.load()
    assert reader.state == ben.last_saved_state
    out = []
    reader.sample('3+4=', dest=out, top=1)
    done = run_script('sample.py', f"--out_dir={os.path.join(ben.path)}", '--checkpoint_name=ckpt.pt',
                      '--start=3+4=', '--num_samples=1', '--temperature=0', '--device=cpu',
                      '--max_new_tokens=9', cwd=tmp, env=script_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == out[0], (done.stdout, out)


def test_save_under_another_name_then_load_it(run):
    tmp, ben, _, _ = run
    copy = Train('add1', work_dir=ben.work_dir, log_mask=LogFlag.NONE)
    copy.load()
    copy.save(name='add1_copy')
    again = Sample('add1_copy', work_dir=ben.work_dir, log_mask=LogFlag.NONE)
    again.load()
    for key, tensor in copy.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[key]), key


# ----------------------------------------------------------------------------- datasets
def test_charline_split_falls_on_a_line_boundary(tmp_path):
    lines = add_lines()
    cfg = empty_config()
    cfg.dataset.set(class_name='charline', train_path=write_lines(tmp_path / 'a.txt', lines),
                    train_split=0.9)
    info = data.prepare(str(tmp_path / 'plain'), cfg, seed=1)
    train, val = data.load_samples(str(tmp_path / 'plain'), info['no_val'], 8)
    assert train.get_data() == lines[:90] and val.get_data() == lines[90:]  # file order kept
    cfg.dataset.params = 'pre_shuffle=True'
    info = data.prepare(str(tmp_path / 'shuffled'), cfg, seed=1)
    train, val = data.load_samples(str(tmp_path / 'shuffled'), info['no_val'], 8)
    assert len(train) == 90 and sorted(train.get_data() + val.get_data()) == sorted(lines)
    assert train.get_data() != lines[:90]


def test_train_split_one_means_no_validation_set(tmp_path):
    """train.py needs a val.bin: it is train.bin's copy, so its 'val' loss is the train loss,
    what GPTBench evaluates without a validation set; val_dataset is None."""
    cfg = empty_config()
    cfg.dataset.set(class_name='char', train_path=write_lines(tmp_path / 't.txt', [make_text(3000)]),
                    train_split=1.)
    info = data.prepare(str(tmp_path / 'd'), cfg, seed=1)
    assert info['no_val']
    folder = tmp_path / 'd'
    assert (folder / 'val.bin').read_bytes() == (folder / 'train.bin').read_bytes()
    train, val = data.load_samples(str(folder), True, 16)
    assert val is None and train.get_data() == make_text(3000) + '\n'


def test_get_data_split_places_the_separator_as_told(tmp_path):
    cfg = empty_config()
    cfg.dataset.set(class_name='charline', train_path=write_lines(tmp_path / 'q.txt',
                                                                   ['12+34=46', '9+9=18']),
                    train_split=1.)
    info = data.prepare(str(tmp_path / 'd'), cfg, seed=1)
    train, _ = data.load_samples(str(tmp_path / 'd'), info['no_val'], 8)
    assert train.get_data_split(0, 2) == (['12+34=', '9+9='], ['46', '18'])
    assert train.get_data_split(1, 5, sep='=', sep_included=1) == (['9+9'], ['=18'])
    assert train.get_data_split(0, 1, sep='+', sep_included=0) == (['12'], ['34=46'])


# ----------------------------------------------------------------------------- sampling
def test_top_has_gptbench_meanings():
    assert top_filter(0, 50) == (None, None)
    assert top_filter(0.6, 50) == (None, 0.6)  # ]0, 1[: top_p
    assert top_filter(1, 50) == (1, None) and top_filter(40, 50) == (40, None)  # >= 1: top_k
    assert top_filter(-0.5, 50) == (25, None)  # [-1, 0[: that share of the vocabulary
    assert top_filter(500, 50) == (50, None)
    with pytest.raises(GPTBenchError):
        top_filter(-2, 50)


def test_measure_accuracy_is_line_accuracy(run):
    """Greedy answers through the KV cache, scored against smallgpt.metrics.line_accuracy (its
    own decode loop); test_fn sees (question, answer, generated); log_list keeps the wrong ones
    by default, all of them with log_cond=0."""
    _, ben, _, _ = run
    lines = ben.train_dataset.get_data()
    q, a = ben.train_dataset.get_data_split(0, len(lines))
    reference = line_accuracy(ben.model, ben.tokenizer, lines, '=')
    wrong, seen = [], []
    accuracy = ben.measure_accuracy(q, a, log_list=wrong)
    assert accuracy == reference['accuracy'] and 0 < accuracy < 1, accuracy
    assert len(wrong) == len(q) - reference['correct']
    score = ben.measure_accuracy(q, a, test_fn=lambda *t: seen.append(t) or 1.0, log_list=[],
                                 log_cond=0)
    assert score == 1.0 and [t[:2] for t in seen] == list(zip(q, a))
    assert [g for *_, g in seen if g is not None] and all(
        g == p for (*_, g), p in zip(seen, reference['predictions']) if p is not None)


def test_several_start_texts_are_one_batch_with_the_same_answers(run):
    _, ben, _, _ = run
    one_by_one = []
    for prompt in ('1+2=', '7+7=', '0+9='):
        ben.sample(prompt, dest=one_by_one, top=1)
    batched = []
    ben.sample('1+2=|7+7=|0+9=', dest=batched, top=1)
    assert batched == one_by_one and all(t.startswith(p) for t, p in
                                         zip(batched, ('1+2=', '7+7=', '0+9=')))
    after = []
    ben.sample('1+2=', dest=after, top=1, emit_after='=')
    assert after == [one_by_one[0].split('=', 1)[1]]
    counted = []
    ben.sample('5+5=', dest=counted, top=1, count=3)
    assert len(counted) == 3 and len(set(counted)) == 1  # greedy: three times the same


# ----------------------------------------------------------------------------- settings
def test_the_config_snippet_runs_as_documented(run, capsys):
    _, ben, _, _ = run
    exec(textwrap.dedent("""
        cfg = empty_config()
        cfg.model.block_size=256
        cfg['model.block_size']=512
        cfg.model.set(block_size=1024)
    """), namespace := {'empty_config': empty_config})
    assert namespace['cfg'].model.block_size == 1024 and namespace['cfg'].has('model.block_size')
    exec("print(ben.get_config().dump(2))", {'ben': ben})
    dumped = capsys.readouterr().out
    assert 'model:\n  device=cpu' in dumped and '  n_layer=1\n' in dumped and 'trainer:' in dumped


def test_log_periods_and_limits_map_to_train_py(run):
    """sample_period -> train.py's sample_interval; negative periods are multiples of
    eval_period; max_samples < 0 counts epochs."""
    _, ben, _, _ = run
    saved = ben.config.copy()
    ben.config.trainer.max_samples = -2  # two epochs of 80 lines, 32 a batch: 5 batches
    try:
        ben.set_train_log_periods(dot_period=1, loss_period=0, sample_period=-3)
        settings, notes = ben.train_settings(iter_count=7)
        assert settings['max_iters'] == 5  # the smaller of 40 + 7 and two epochs
        assert settings['log_interval'] == 1
        assert settings['sample_interval'] == 30  # 3 x eval_period 10
        assert settings['sample_temperature'] == 0.0 and not notes  # top=1: greedy
        assert settings['sample_start'] == '' and settings['sample_max_new_tokens'] == 100
        ben.config.sample.set(top=0, temp=0.7, start_text='1+|2+')
        settings, notes = ben.train_settings(iter_count=7)
        assert settings['sample_temperature'] == 0.7 and settings['sample_start'] == '1+'
        assert any("the first of sample.start_text" in n for n in notes)
        ben.config.sample.set(top=3)
        assert any('no top-k/top-p' in n for n in ben.train_settings(iter_count=7)[1])
    finally:
        ben.config = saved


def test_samples_while_training_are_shown_and_kept(run):
    """sample_period=15 over iterations 0..40: train.py sampled at 15 and 30, into samples.txt;
    the second train() showed its sample alone on a line, as GPTBench does."""
    _, ben, _, shown = run
    text = open(os.path.join(ben.path, 'samples.txt'), encoding='utf-8').read()
    blocks = [b.split('\n') for b in text.split('--- iteration ')[1:]]
    assert [int(b[0]) for b in blocks] == [15, 30]
    # the dataset has no answer separator: a sample starts at the first val line's first
    # character and is one whole line the model wrote
    first_val = ben.val_dataset.get_data()[0]
    assert all(b[1][:1] == first_val[0] and len(b[1]) > 1 for b in blocks), blocks
    assert blocks[1][1] in shown.splitlines()
    assert 'sample at iteration' not in shown


def test_train_py_section_passes_this_repos_settings(run):
    _, ben, _, _ = run
    saved = ben.config.copy()
    try:
        ben.config.train_py.set(loss_on='answer', answer_separator='=')
        settings, _ = ben.train_settings(1)
        assert settings['loss_on'] == 'answer' and settings['answer_separator'] == '='
        with pytest.raises(GPTBenchError, match=r"^unknown config key 'train_py.los_on'; "
                                                r"did you mean 'train_py.loss_on'"):
            ben.config.train_py.los_on = 'answer'
        ben.config.train_py.max_iters = 3
        with pytest.raises(GPTBenchError, match='decided by the run'):
            ben.train_settings(1)
    finally:
        ben.config = saved


# ----------------------------------------------------------------------------- one-line errors
def one_line(error):
    assert '\n' not in str(error), str(error)
    return str(error)


def test_unknown_config_keys_name_the_nearest_real_one():
    cfg = empty_config()
    with pytest.raises(GPTBenchError) as e:
        cfg.model.n_layr = 6
    assert "'model.n_layer'" in one_line(e.value)
    with pytest.raises(GPTBenchError) as e:
        cfg['trainer.lerning_rate'] = 1e-3
    assert "'trainer.learning_rate'" in one_line(e.value)
    with pytest.raises(GPTBenchError) as e:
        cfg.model.set(batch_size=64)  # the right name in the wrong section
    assert "'trainer.batch_size'" in one_line(e.value)
    with pytest.raises(GPTBenchError) as e:
        cfg.update_from_args(['-sample.tmp=0.5'])
    assert "'sample.temp'" in one_line(e.value)
    with pytest.raises(GPTBenchError, match='expected int'):
        cfg.update_from_args(['-trainer.batch_size=big'])


def test_command_line_help_lists_the_settings(tmp_path):
    """-help (and -h, --help) prints the usage and every setting with its default, exit 0; it
    trains nothing (no checkpoints folder appears)."""
    for flag in ('-help', '--help', '-h'):
        out = run_python(['-m', 'gptbench.run', flag], tmp_path, gptbench_env())
        assert out.startswith('usage: python -m gptbench.run -init=') and 'model.n_layer = None' in out
    assert not (tmp_path / 'checkpoints').exists()


def test_a_missing_train_path_is_one_line(tmp_path):
    ben = Train('x', work_dir=str(tmp_path))
    with pytest.raises(GPTBenchError) as e:
        ben.set_datasets(class_name='charline')
    assert 'train_path=FILE' in one_line(e.value)
    cfg = tiny_config()
    cfg.dataset.set(class_name='charline', train_path=str(tmp_path / 'missing.txt'))
    with pytest.raises(GPTBenchError) as e:
        ben.init_new(cfg)
    assert 'missing.txt' in one_line(e.value) and 'no such file' in str(e.value)


def test_a_charline_line_longer_than_block_size_is_one_line(tmp_path):
    ben = Train('x', work_dir=str(tmp_path), log_mask=LogFlag.NONE)
    ben.set_datasets(class_name='charline', train_path=write_lines(tmp_path / 'a.txt', add_lines(2)))
    with pytest.raises(GPTBenchError) as e:
        ben.init_new(tiny_config())  # block_size 8 < '10+99=109' (9 characters)
    assert 'model.block_size=9' in one_line(e.value) and '9 characters' in str(e.value)


def test_unsupported_optimizer_is_one_line(run):
    _, ben, _, _ = run
    ben.config.trainer.optimizer = 'sgd'
    try:
        with pytest.raises(GPTBenchError) as e:
            ben.train_settings(1)
        assert "use 'adamw'" in one_line(e.value)
    finally:
        ben.config.trainer.optimizer = 'adamw'


def test_config_run_mistakes_are_one_line_on_stderr(tmp_path, capsys):
    for argv, expected in (
            (['-init=resume', '-mode=sample', '-name=add2'], "no checkpoint named 'add2'"),
            (['-init=new', '-mode=train', '-model.n_layr=2'], "'model.n_layer'"),
            (['-mode=train'], 'give -init=new|resume'),
            (['-init=new', '-mode=fly'], '-mode=fly')):
        with pytest.raises(SystemExit) as e:
            config_run(empty_config(), ['run.py', f'-work_dir={tmp_path}', *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1 and expected in err, err


def test_gpt2_weights_not_available_offline_is_one_line(monkeypatch, tmp_path):
    assert not gptbench.bench._in_hf_cache('gpt2', cache_dir=str(tmp_path))
    monkeypatch.setattr(gptbench.bench, '_in_hf_cache', lambda name: False)
    monkeypatch.setattr(gptbench.bench, 'hub_reachable', lambda: False)
    with pytest.raises(GPTBenchError) as e:
        Sample('gpt2', log_mask=LogFlag.NONE).init_pretrained('gpt2', empty_config())
    assert "init_pretrained('/path/to/folder', cfg)" in one_line(e.value)


# ----------------------------------------------------------------------------- the README, verbatim
USAGE_SAMPLE = '''
from gptbench import Sample, empty_config

ben = Sample('gpt2')

cfg = empty_config()
ben.init_pretrained('gpt2', cfg)

ben.sample("What a beautiful day")
'''
USAGE_PROMPT = '''
ben.prompt()
'''
USAGE_TRAIN = '''
from gptbench import Train, empty_config

ben = Train('shakespeare-model', seed=0xacac1a)

# set train dataset - no validation dataset to maximize training data
ben.set_datasets(class_name='gpt2', # GPT2TokensDataset
                 train_path='../data/shakespeare.txt', 
                 train_split=1.) 

# set config settings
cfg = empty_config()
cfg.model.set(n_layer=8, n_head=8, n_embd=128, block_size=64)
cfg.trainer.set(batch_size=128)

# init a blank model
ben.init_new(cfg)

# train it for 2000 iters
ben.train(iter_count=2000)

# sample something
ben.sample("So it goes")
'''
USAGE_LOAD = '''
# later, instead of ben.init_new(), we init by loading the checkpoint:
ben.load(name='shakespeare-model')

# the model can be manually saved at any time with:
ben.save(name='shakespeare-model')
'''
SCRIPT = '''
import sys
from gptbench import config_run, empty_config

if __name__ == '__main__':

    # setup default config options
    c = empty_config()

    # train
    c.train.eval_period=100

    # sample
    c.sample.set(top=1) # top_k(1) - always pick the best item

    # dataset
    c.dataset.set(class_name='charline',
                  train_path='../data/add2.txt', 
                  train_split=0.9,
                  params='pre_shuffle=True')

    # model
    c.model.set(n_layer=6, 
                n_head=6, 
                n_embd=90, 
                block_size=16)

    # trainer
    c.trainer.set(batch_size=128)

    obj = config_run(c, sys.argv)
'''


def gptbench_env(**extra):
    """A subprocess that imports gptbench from this checkout, offline."""
    return script_env(PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', **extra)


def run_python(args, cwd, env, stdin=None, timeout=300):
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def tiny_gpt2_cache(root):
    """A Hugging Face hub cache holding a tiny random GPT-2 under the name 'gpt2' (the layout
    a first from_pretrained('gpt2') download leaves), and its snapshot folder."""
    from transformers import GPT2Config, GPT2LMHeadModel
    snapshot = root / 'models--gpt2' / 'snapshots' / ('0' * 40)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                               vocab_size=50257)).save_pretrained(snapshot)
    (root / 'models--gpt2' / 'refs').mkdir()
    (root / 'models--gpt2' / 'refs' / 'main').write_text('0' * 40)
    return snapshot


def test_usage_sample_and_prompt_from_gpt2(tmp_path):
    """The README's first snippets, verbatim; then the greedy sample is checked against Hugging
    Face's own generate() on the same weights."""
    from conftest import skip_without_gpt2_bpe
    skip_without_gpt2_bpe()
    snapshot = tiny_gpt2_cache(tmp_path / 'hub')
    check = f'''
out = []
ben.sample("What a beautiful day", dest=out, top=1, max_len=8)
from transformers import GPT2LMHeadModel
import tiktoken
enc = tiktoken.get_encoding("gpt2")
hf = GPT2LMHeadModel.from_pretrained({str(snapshot)!r}).eval()
ids = enc.encode("What a beautiful day")
import torch
greedy = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
print("HF:" + repr(enc.decode(greedy[0].tolist())) + " OURS:" + repr(out[0]))
from gptbench import Train
saver = Train("gpt2-copy")
saver.init_pretrained("gpt2", empty_config())
saver.save()
again, out = Sample("gpt2-copy"), []
again.load()
again.sample("What a beautiful day", dest=out, top=1, max_len=8)
print("SAVED:" + repr(out[0]))
'''
    (tmp_path / 'usage.py').write_text(USAGE_SAMPLE + USAGE_PROMPT + check)
    out = run_python(['usage.py'], tmp_path, gptbench_env(HF_HUB_CACHE=str(tmp_path / 'hub')),
                     stdin='-max_len=3\nOnce\n-quit\n')
    assert '\nWhat a beautiful day' in out and 'Prompt mode' in out and '> Once' in out, out
    hf, ours = out.split('HF:')[1].split('\n')[0].split(' OURS:')
    assert hf == ours, out
    assert out.split('SAVED:')[1].strip() == ours, out  # saved and loaded back: the same model


@pytest.mark.slow
def test_usage_train_load_save_verbatim(tmp_path):
    """The README's training snippet (GPT-2 tokens, no validation set) and load/save, verbatim,
    smoke-sized (GPTBENCH_SMOKE=1); train.py's 'val' loss is then its train loss."""
    from conftest import skip_without_gpt2_bpe
    skip_without_gpt2_bpe()
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'shakespeare.txt').write_text(make_text(20_000))
    (tmp_path / 'work').mkdir()
    (tmp_path / 'work' / 'usage.py').write_text(USAGE_TRAIN + USAGE_LOAD + 'print(ben.state)\n')
    out = run_python(['usage.py'], tmp_path / 'work', gptbench_env(GPTBENCH_SMOKE='1'))
    assert '\nSo it goes' in out and 'GPTBENCH_SMOKE=1' in out, out
    assert "'val_loss': inf" in out, out
    run_dir = tmp_path / 'work' / 'checkpoints' / 'shakespeare-model'
    rows = [r for r in read_log(run_dir / 'log.csv') if r['kind'] == 'eval']
    assert rows and all(r['train_loss'] == r['val_loss'] for r in rows)
    assert (run_dir / 'ckpt.pt').is_file() and (run_dir / 'last.pt').is_file()


@pytest.mark.slow
def test_script_and_command_lines_verbatim(tmp_path):
    """The README's config_run script with its command line, then `python -m gptbench.run
    -init=resume -mode=sample -sample.start_text="21+89="` on the run it made (-name defaults
    to 'model'), and the same with -name=add2 from the command line alone."""
    (tmp_path / 'data').mkdir()
    write_lines(tmp_path / 'data' / 'add2.txt', add_lines(2))
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'script.py').write_text(SCRIPT)
    env = gptbench_env(GPTBENCH_SMOKE='2')
    out = run_python(['script.py', '-init=new', '-mode=train', '-trainer.batch_size=256'], work, env)
    assert 'Initializing new model model' in out and 'Iter 2 (' in out, out
    saved = json.loads((work / 'checkpoints' / 'model' / 'gptbench.json').read_text())
    assert saved['config']['trainer.batch_size'] == 256 and saved['config']['train.eval_period'] == 100
    out = run_python(['-m', 'gptbench.run', '-init=resume', '-mode=sample',
                      '-sample.start_text=21+89='], work, env)
    assert '\n21+89=' in out, out
    run_python(['-m', 'gptbench.run', '-name=add2', '-init=new', '-mode=train',
                '-dataset.class_name=charline', '-dataset.train_path=../data/add2.txt',
                '-dataset.params=pre_shuffle=True', '-model.n_layer=2', '-model.n_head=2',
                '-model.n_embd=32', '-model.block_size=16', '-trainer.batch_size=64'], work, env)
    out = run_python(['-m', 'gptbench.run', '-name=add2', '-init=resume', '-mode=sample',
                      '-sample.start_text=21+89='], work, env)
    assert '\n21+89=' in out and (work / 'checkpoints' / 'add2' / 'run.log').is_file(), out


@pytest.mark.slow
def test_command_line_train_then_sample_prints_the_learned_sum(tmp_path):
    """The issue's command-line proof, small: -init=new -mode=train on 8 sums (all of them
    train, train_split=1.), 300 batches of a 1-layer model that learns them by heart, then
    -init=resume -mode=sample -sample.start_text="21+89=" prints 21+89=110. An untrained or
    wrongly loaded model answers something else (docs/gptbench.md has the full-size run)."""
    write_lines(tmp_path / 'sums.txt', ['21+89=110', '3+4=7', '10+20=30', '55+45=100', '7+8=15',
                                        '60+1=61', '99+99=198', '12+34=46'])
    env = gptbench_env()
    run_python(['-m', 'gptbench.run', '-name=add2', '-init=new', '-mode=train', '-seed=1',
                '-dataset.class_name=charline', '-dataset.train_path=sums.txt',
                '-dataset.train_split=1.', '-model.n_layer=1', '-model.n_head=2',
                '-model.n_embd=32', '-model.block_size=16', '-model.device=cpu',
                '-trainer.batch_size=8', '-trainer.learning_rate=1e-2',
                '-trainer.max_samples=2400', '-train.eval_period=100', '-train.eval_iters=1'],
               tmp_path, env)
    out = run_python(['-m', 'gptbench.run', '-name=add2', '-init=resume', '-mode=sample',
                      '-sample.start_text=21+89=', '-sample.top=1'], tmp_path, env)
    assert out.splitlines()[-1] == '21+89=110', out


@pytest.mark.slow
def test_the_gptbench_style_notebook_runs(tmp_path):
    """examples/gptbench_add.ipynb in a real kernel, GPTBENCH_SMOKE=3 (3 iterations)."""
    _, outputs = run_notebook("gptbench_add.ipynb", tmp_path, GPTBENCH_SMOKE="3", OMP_NUM_THREADS="1")
    assert 'validation accuracy:' in outputs and 'Iter 3 (' in outputs, outputs
    assert (tmp_path / 'checkpoints' / 'add2' / 'ckpt.pt').is_file()


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_training_with_a_checkpoint(tmp_path):
    """A terminal's Ctrl+C is SIGINT to the whole foreground process group. train() then stops
    train.py once (it finishes the step and writes last.pt) and returns with that state."""
    import signal
    import time
    write_lines(tmp_path / 'add1.txt', add_lines())
    (tmp_path / 'stop.py').write_text(textwrap.dedent("""
        from gptbench import Train, empty_config
        ben = Train('stop', seed=1)
        ben.set_train_log_periods(dot_period=1, loss_period=0, sample_period=0)
        ben.set_datasets(class_name='charline', train_path='add1.txt')
        cfg = empty_config()
        cfg.model.set(n_layer=1, n_head=2, n_embd=32, block_size=8, device='cpu')
        cfg.train.set(eval_period=100000, eval_iters=1)
        ben.init_new(cfg)
        ben.train()  # no iter_count, no max_samples: until Ctrl+C
        print('STATE', ben.state['iter_num'])
    """))
    process = subprocess.Popen([sys.executable, 'stop.py'], cwd=tmp_path, env=gptbench_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # a process group, as a terminal's job
    log = tmp_path / 'checkpoints' / 'stop' / 'log.csv'
    deadline = time.time() + 240
    while not (log.is_file() and any(r['kind'] == 'train' for r in read_log(log))):
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0 and 'training stopped' in out, out
    stopped_at = int(out.split('STATE ')[1].split()[0])
    last = torch.load(tmp_path / 'checkpoints' / 'stop' / 'last.pt', weights_only=True)
    assert stopped_at >= 1 and last['iter_num'] == stopped_at, out


# ----------------------------------------------------------------------------- the number sequences
def test_sequence_lines_are_arithmetic_and_the_config_fits_them():
    spec = importlib.util.spec_from_file_location('sequences', REPO / 'data' / 'sequences' / 'prepare.py')
    sequences = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sequences)
    lines = sequences.sequence_lines(terms=5, max_start=999, max_step=9)
    assert len(lines) == len(set(lines)) == 1000 * 9
    for line in lines[::97]:
        shown, answer = line.split('=')
        terms = [int(t) for t in shown.split(' ')]
        steps = {b - a for a, b in zip(terms, terms[1:])}
        assert len(terms) == 5 and len(steps) == 1 and int(answer) == terms[-1] + steps.pop()
    config = {}
    exec((REPO / 'config' / 'train_sequences.py').read_text(), config)
    assert config['block_size'] == max(len(line) for line in lines)


def test_pyproject_installs_gptbench():
    with open(REPO / 'pyproject.toml', 'rb') as f:
        assert 'gptbench' in tomllib.load(f)['tool']['setuptools']['packages']
