"""
Tests for configurator.py: config files, --key=value overrides, typos, types and --help.

    python -m pytest tests/test_configurator.py -q

CPU only, offline, a few seconds. Most tests call configure() in-process on a copy of train.py's
defaults block (read from train.py's source with ast, so the tests follow the real keys); a few
run `python train.py ...` to check what a user sees: exit code 2, one line on stderr, no work done.
"""

import ast
import io
import os
import tokenize

import pytest

from conftest import REPO, error_lines, run_script

import configurator  # noqa: E402  (conftest put the repo on sys.path)

TRAIN = REPO / "train.py"


def defaults_block(script):
    """(names in order, {name: default}, {name: comment}) of a script's defaults block: the
    top-level assignments before `from configurator import configure`. Read with ast and
    tokenize, independently of configurator's own regex."""
    source = script.read_text(encoding="utf-8")
    names, values = [], {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module == "configurator":
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            names.append(name)
            values[name] = eval(compile(ast.Expression(node.value), str(script), "eval"), {}, dict(values))
    comments = {}
    line_names = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in values:
            line_names.setdefault(node.lineno, node.targets[0].id)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_names:
            comments.setdefault(line_names[tok.start[0]], tok.string.lstrip("#").strip())
    return names, values, comments


def train_defaults():
    """A fresh namespace like train.py's globals() at the moment it calls configure()."""
    _, values, _ = defaults_block(TRAIN)
    return dict(values, __file__=str(TRAIN))


def configure_exit(capsys, namespace, argv):
    """Run configure() expecting it to stop; return (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as info:
        configurator.configure(namespace, argv, script=str(TRAIN))
    return info.value.code, error_lines(capsys.readouterr().err)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- unknown keys

def test_unknown_cli_keys_stop_before_anything_with_close_matches(capsys, tmp_path):
    ns = train_defaults()
    before = dict(ns)
    # a config file that leaves a trace if it runs: the typo must be caught before it does
    marker = tmp_path / "config_ran"
    cfg = write(tmp_path / "cfg.py", f"open({str(marker)!r}, 'w').close()\nmax_iters = 5\n")
    code, err = configure_exit(capsys, ns, [cfg, "--lerning_rate=1", "--max_iters=3", "--max_iter=3"])
    assert code == 2
    assert len(err) == 1, err
    assert "lerning_rate (did you mean learning_rate?)" in err[0]
    assert "max_iter (did you mean max_iters" in err[0]
    assert "--max_iters" not in err[0].split("unknown")[1]  # the valid key isn't reported
    assert not marker.exists(), "a config file ran before the command line typo was reported"
    assert ns == before, "settings were applied before the typo stopped the run"


def test_other_repos_names_suggest_ours_first(capsys):
    """Names docs/coming-from.md maps (the Hydra re-implementation's grad_accum and data_dir)
    suggest this repo's setting, not the nearest spelling (grad_clip, out_dir)."""
    code, err = configure_exit(capsys, train_defaults(), ["--grad_accum=4", "--data_dir=bins"])
    assert code == 2 and len(err) == 1
    assert "grad_accum (did you mean gradient_accumulation_steps" in err[0]
    assert "data_dir (did you mean dataset" in err[0]


def test_unknown_key_in_config_file(capsys, tmp_path):
    cfg = write(tmp_path / "typo.py", "max_iters = 10\nlearnin_rate = 1e-3\nbatchsize = 4\n")
    code, err = configure_exit(capsys, train_defaults(), [cfg])
    assert code == 2
    assert len(err) == 1, err
    assert cfg in err[0]
    assert "learnin_rate (did you mean learning_rate?)" in err[0]
    assert "batchsize (did you mean batch_size" in err[0]


def test_config_file_may_import_and_use_helpers(tmp_path):
    # modules and functions a config file imports are not settings, whatever their kind
    cfg = write(tmp_path / "helpers.py", "import math\nfrom math import sqrt\nfrom os.path import join\n"
                                         "def half(x):\n    return x / 2\n"
                                         "learning_rate = sqrt(1e-6)\nout_dir = join('runs', 'a')\n"
                                         "min_lr = half(learning_rate)\n")
    ns = train_defaults()
    config = configurator.configure(ns, [cfg], script=str(TRAIN))
    assert config["learning_rate"] == pytest.approx(1e-3)
    assert config["min_lr"] == pytest.approx(5e-4)
    assert config["out_dir"] == os.path.join("runs", "a")
    assert "sqrt" not in config and "half" not in config


def test_typo_through_train_py_does_no_work(tmp_path):
    out_dir = tmp_path / "out"
    result = run_script("train.py", "--lerning_rate=1", f"--out_dir={out_dir}", "--device=cpu",
                        cwd=tmp_path)
    assert result.returncode == 2
    err = error_lines(result.stderr)
    assert len(err) == 1, result.stderr
    assert "lerning_rate" in err[0] and "learning_rate" in err[0]
    assert not out_dir.exists()
    assert "step" not in result.stdout and "iter" not in result.stdout

    cfg = write(tmp_path / "typo.py", f"out_dir = {str(out_dir)!r}\nmax_iter = 10\n")
    result = run_script("train.py", cfg, "--device=cpu", cwd=tmp_path)
    assert result.returncode == 2
    err = error_lines(result.stderr)
    assert len(err) == 1, result.stderr
    assert "max_iter (did you mean max_iters" in err[0]
    assert not out_dir.exists()


# ----------------------------------------------------------------------------- types

def test_int_for_float_is_accepted_as_float(tmp_path):
    ns = train_defaults()
    config = configurator.configure(ns, ["--learning_rate=1", "--dropout=0"], script=str(TRAIN))
    assert config["learning_rate"] == 1.0 and type(config["learning_rate"]) is float
    assert config["dropout"] == 0.0 and type(config["dropout"]) is float
    assert type(ns["learning_rate"]) is float  # the script's global, not only the returned dict

    cfg = write(tmp_path / "ints.py", "min_lr = 0\nbeta2 = 1\n")
    config = configurator.configure(train_defaults(), [cfg], script=str(TRAIN))
    assert type(config["min_lr"]) is float and type(config["beta2"]) is float


@pytest.mark.parametrize("raw, expected", [
    ("false", False), ("FALSE", False), ("False", False), ("fAlSe", False), ("0", False),
    ("true", True), ("TRUE", True), ("True", True), ("1", True),
])
def test_booleans_in_any_case(raw, expected):
    config = configurator.configure(train_defaults(), [f"--compile={raw}"], script=str(TRAIN))
    assert config["compile"] is expected


@pytest.mark.parametrize("arg, message", [
    ("--max_iters=abc", "--max_iters: expected int, got 'abc'"),
    ("--max_iters=1.5", "--max_iters: expected int, got 1.5"),
    ("--max_iters=True", "--max_iters: expected int, got True"),
    ("--max_iters=None", "--max_iters: expected int, got None"),
    ("--learning_rate=fast", "--learning_rate: expected float, got 'fast'"),
    ("--learning_rate=[1]", "--learning_rate: expected float, got [1]"),
    ("--compile=yes", "--compile: expected bool, got 'yes'"),
    ("--compile=2", "--compile: expected bool, got 2"),
])
def test_wrong_type_names_key_expected_and_given(capsys, arg, message):
    code, err = configure_exit(capsys, train_defaults(), [arg])
    assert code == 2
    assert err == [f"error: {message}"]


def test_wrong_type_in_config_file(capsys, tmp_path):
    cfg = write(tmp_path / "bad.py", "learning_rate = 'fast'\n")
    code, err = configure_exit(capsys, train_defaults(), [cfg])
    assert code == 2
    assert len(err) == 1 and cfg in err[0] and "learning_rate: expected float, got 'fast'" in err[0]

    cfg = write(tmp_path / "bad2.py", "out_dir = 5\n")
    code, err = configure_exit(capsys, train_defaults(), [cfg])
    assert code == 2 and "out_dir: expected str, got 5" in err[0]


def test_missing_value(capsys):
    code, err = configure_exit(capsys, train_defaults(), ["--compile"])
    assert code == 2
    assert len(err) == 1 and "--compile" in err[0] and "--compile=VALUE" in err[0]


# ----------------------------------------------------------------------------- strings

@pytest.mark.parametrize("arg, expected", [
    ("--start=a=b", "a=b"),                      # split at the first '=' only
    ("--start=x==y = z", "x==y = z"),
    ("--start=FILE:prompt/don.txt", "FILE:prompt/don.txt"),
    ("--start=3", "3"),                          # a number typed for a str key stays the text
    ("--start=[1, 2]", "[1, 2]"),
    ("--start='quoted twice'", "quoted twice"),  # shell quoting kept by a second pair of quotes
    ("--start=", ""),
])
def test_string_values_are_kept_whole(arg, expected):
    ns = {"start": "\n", "num_samples": 10}
    config = configurator.configure(ns, [arg], script=None)
    assert config["start"] == expected
    assert ns["num_samples"] == 10


def test_equals_in_value_for_train_keys():
    config = configurator.configure(train_defaults(), ["--wandb_run_name=lr=1e-3,bs=4"],
                                    script=str(TRAIN))
    assert config["wandb_run_name"] == "lr=1e-3,bs=4"


# ----------------------------------------------------------------------------- help

def test_help_lists_every_key_with_default_and_comment(capsys, tmp_path):
    script = tmp_path / "toy.py"
    write(script, "# a toy script\n"
                  "alpha = 3  # how many alphas\n"
                  "beta = 'b'  # the beta: with a colon\n"
                  "gamma = 1e-4\n"
                  "delta = True  # on or off\n")
    ns = {"alpha": 3, "beta": "b", "gamma": 1e-4, "delta": True}
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as info:
            configurator.configure(dict(ns), ["--alpha=5", flag], script=str(script))
        assert info.value.code == 0
        out = capsys.readouterr().out
        lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith("--")}
        assert set(lines) == {"--alpha", "--beta", "--gamma", "--delta"}
        assert "3" in lines["--alpha"] and "# how many alphas" in lines["--alpha"]
        assert "'b'" in lines["--beta"] and "# the beta: with a colon" in lines["--beta"]
        assert "0.0001" in lines["--gamma"] and "#" not in lines["--gamma"]
        assert "True" in lines["--delta"] and "# on or off" in lines["--delta"]


def test_train_py_help(tmp_path):
    result = run_script("train.py", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    names, values, comments = defaults_block(TRAIN)
    lines = {line.split()[0][2:]: line for line in result.stdout.splitlines()
             if line.strip().startswith("--")}
    assert list(lines) == names  # every key, in the order of the defaults block
    for name in names:
        assert repr(values[name]) in lines[name], lines[name]
        if comments.get(name):
            assert lines[name].rstrip().endswith(comments[name]), lines[name]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- config files

def test_config_files_apply_in_order_and_cli_wins(tmp_path):
    first = write(tmp_path / "first.py", "max_iters = 100\nbatch_size = 8\nout_dir = 'out-first'\n")
    second = write(tmp_path / "second.py", "max_iters = max_iters * 3\nout_dir = out_dir + '-second'\n"
                                           "lr_decay_iters = max_iters\n")
    config = configurator.configure(train_defaults(), [first, second], script=str(TRAIN))
    assert config["max_iters"] == 300
    assert config["lr_decay_iters"] == 300
    assert config["batch_size"] == 8
    assert config["out_dir"] == "out-first-second"

    config = configurator.configure(train_defaults(), [second, first], script=str(TRAIN))
    assert config["max_iters"] == 100  # the later file wins
    assert config["out_dir"] == "out-first"

    config = configurator.configure(train_defaults(), [first, second, "--max_iters=7"],
                                    script=str(TRAIN))
    assert config["max_iters"] == 7
    assert config["lr_decay_iters"] == 300


def test_bare_config_names_are_found_in_config_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo root: the lookup must not depend on the cwd
    for name in ("train_shakespeare_char", "train_shakespeare_char.py", "config/train_shakespeare_char.py"):
        if name.startswith("config/"):
            name = str(REPO / name)
        config = configurator.configure(train_defaults(), [name], script=str(TRAIN))
        assert config["dataset"] == "shakespeare_char"
        assert config["max_iters"] == 5000 and config["n_layer"] == 6 and config["dropout"] == 0.2

    # the DI725 course's CPU recipe as a preset after a dataset config: it derives its out_dir
    config = configurator.configure(train_defaults(), ["train_shakespeare_char", "cpu_small"],
                                    script=str(TRAIN))
    assert config["out_dir"] == "out-shakespeare-small-char"
    assert (config["n_layer"], config["n_embd"], config["block_size"], config["compile"]) == (4, 128, 64, False)
    assert config["dataset"] == "shakespeare_char"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.py")))
def test_every_shipped_config_applies_to_train_py(name):
    config = configurator.configure(train_defaults(), [str(REPO / "config" / name)], script=str(TRAIN))
    for key, value in train_defaults().items():
        if key != "__file__" and value is not None:
            assert type(config[key]) is type(value), key


def test_missing_config_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = configure_exit(capsys, train_defaults(), ["train_no_such_thing"])
    assert code == 2
    assert len(err) == 1
    assert "'train_no_such_thing' not found" in err[0]


def test_broken_config_file_is_one_line(capsys, tmp_path):
    cfg = write(tmp_path / "broken.py", "max_iters = 10\nbatch_size = (\n")
    code, err = configure_exit(capsys, train_defaults(), [cfg])
    assert code == 2 and len(err) == 1 and cfg in err[0] and "SyntaxError" in err[0]

    cfg = write(tmp_path / "raises.py", "max_iters = undefined_name * 2\n")
    code, err = configure_exit(capsys, train_defaults(), [cfg])
    assert code == 2 and len(err) == 1 and "NameError" in err[0] and "undefined_name" in err[0]


def test_hydra_style_config_name(tmp_path):
    # the GPT-2 re-implementation with Hydra configs prints `train.py --config-path=config --config-name=finetune_shakespeare`
    config = configurator.configure(train_defaults(), ["--config-path=config",
                                                       "--config-name=train_shakespeare_char"],
                                    script=str(TRAIN))
    assert config["dataset"] == "shakespeare_char"


def test_hydra_config_path_is_where_the_name_is_looked_for(capsys, tmp_path, monkeypatch):
    """--config-path=DIR: the user's own folder wins over config/ (same name), a name missing
    there is an error naming DIR, and a relative DIR is found from another folder too."""
    (tmp_path / "myconf").mkdir()
    write(tmp_path / "myconf" / "finetune_shakespeare.py", "out_dir = 'out-mine'\n")
    monkeypatch.chdir(tmp_path)
    config = configurator.configure(train_defaults(), ["--config-path=myconf",
                                                       "--config-name=finetune_shakespeare"],
                                    script=str(TRAIN))
    assert config["out_dir"] == "out-mine"
    code, err = configure_exit(capsys, train_defaults(), [f"--config-path={tmp_path / 'myconf'}",
                                                          "--config-name=train_shakespeare_char"])
    assert code == 2 and len(err) == 1 and "myconf" in err[0] and "not found" in err[0]
    config = configurator.configure(train_defaults(), ["--config-path=config",  # the repo's, from tmp
                                                       "--config-name=train_shakespeare_char"],
                                    script=str(TRAIN))
    assert config["dataset"] == "shakespeare_char"


def test_returned_config_is_the_final_namespace():
    ns = train_defaults()
    config = configurator.configure(ns, ["train_shakespeare_char", "--batch_size=3"], script=str(TRAIN))
    assert config == {k: ns[k] for k in config}
    assert set(config) == set(train_defaults()) - {"__file__"}
    assert ns["batch_size"] == 3


# ----------------------------------------------------------------------------- which keys were given

def test_given_keys_are_what_files_and_the_command_line_set_even_to_the_default(tmp_path):
    """return_given=True also returns the keys a config file assigns or --key=value sets, whatever
    the value: block_size = 1024 and n_layer = 12 are train.py's defaults (and 12 is the very same
    int object, which the file's 'changed' check can't tell apart), yet they were chosen. A
    helper's local variable and a key only read are not given; an ignored key never is."""
    cfg = write(tmp_path / "gpt2_like.py", "block_size = 1024\nn_layer = 12\n"
                                           "def helper():\n    dropout = 0.5\n    return dropout\n"
                                           "if True:\n    bias = False\n"
                                           "max_iters = lr_decay_iters\n")
    config, given = configurator.configure(train_defaults(), [cfg, "--learning_rate=6e-4"],
                                           script=str(TRAIN), return_given=True)
    assert config["block_size"] == 1024 and config["n_layer"] == 12  # the defaults' values
    assert given == {"block_size", "n_layer", "bias", "max_iters", "learning_rate"}

    _, given = configurator.configure(train_defaults(), [], script=str(TRAIN), return_given=True)
    assert given == set()

    ns = train_defaults()
    ns.pop("block_size")  # a script without the key reads it from a shared config file, ignored
    _, given = configurator.configure(ns, [cfg], script=str(TRAIN), ignore=("block_size",),
                                      return_given=True)
    assert "block_size" not in given and "n_layer" in given
