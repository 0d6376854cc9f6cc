"""
Every command line that README.md, the pages of docs/ and the scripts' docstrings show in a code
block must work as printed: the script exists, its config files exist, every --key is a setting of
that script with a value of the right type. Checked in a dry mode (NANOGPT_DRY_RUN=1:
configurator.py validates the command line, prints the settings and exits), so nothing is trained
or downloaded; argparse scripts are checked against their --help. Each test id starts with the
file the line came from (README.md, docs/sampling.md, train.py ...). ~10 s.

    python -m pytest tests/test_usage.py -v
"""

import ast
import contextlib
import io
import re
import runpy
import shlex
import sys

import pytest

from conftest import REPO

CONFIGURED = {"train.py", "sample.py", "bench.py", "export.py", "eval.py", "show_batches.py",
              "examples/loss_by_position.py", "examples/draw_architecture.py"}  # scripts that use configurator.py
ARGPARSE = {"plot.py", "tests/mutate.py", "examples/gptbench_measure.py"}  # and data/*/prepare.py
DOCS = sorted((REPO / "docs").glob("*.md"))


def docstring_lines(path):
    """The module docstring of `path` as written in the source (escapes such as \\n kept)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
    if node is None or not isinstance(node.value, ast.Constant):
        return []
    source = path.read_text(encoding="utf-8").splitlines()
    return source[node.lineno - 1:node.end_lineno]


def code_block_lines(path):
    """The lines inside the ``` code blocks of a Markdown file."""
    lines, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def command_lines(lines):
    """The `python ...` / `torchrun ...` lines among `lines`, without a trailing '# comment'."""
    found = []
    for line in lines:
        line = line.strip()
        line = re.sub(r"^[A-Z_]+=\S+\s+", "", line)  # e.g. NCCL_IB_DISABLE=1 python ...
        if line.startswith(("python ", "torchrun ")) and not line.startswith("python -m"):
            found.append(line)
    return found


def all_commands():
    sources = {"README.md": command_lines(code_block_lines(REPO / "README.md"))}
    for path in DOCS:
        sources[str(path.relative_to(REPO))] = command_lines(code_block_lines(path))
    scripts = sorted(REPO.glob("*.py")) + sorted(REPO.glob("data/*/prepare.py"))
    for path in scripts:
        sources[str(path.relative_to(REPO))] = command_lines(docstring_lines(path))
    return [(where, line) for where, lines in sources.items() for line in lines]


COMMANDS = all_commands()


def split_command(line):
    """(script, args) of a command line; torchrun's own options are dropped."""
    tokens = shlex.split(line, comments=True)
    tokens = tokens[1:]  # python / torchrun
    while tokens and not tokens[0].endswith(".py"):
        tokens = tokens[1:]  # torchrun's --nproc_per_node=... etc.
    assert tokens, f"no script in {line!r}"
    script, args = tokens[0], tokens[1:]
    args = [a.strip("[]") for a in args if a.strip("[]") not in ("...", "")]
    return script, args


def test_found_the_command_lines():
    # a sanity check on the extraction itself: the README's one command per task, the docs pages'
    # commands (each page named in its ids) and the scripts' docstrings are all in it
    readme = [line for where, line in COMMANDS if where == "README.md"]
    readme_commands = [split_command(line) for line in readme]  # (script, args), comments dropped
    assert ("train.py", ["config/train_don_char.py", "config/cpu_small.py"]) in readme_commands
    for script in ("data/don_char/prepare.py", "train.py", "sample.py", "eval.py", "export.py"):
        assert any(s == script for s, _ in readme_commands), script
    assert any(line.startswith("torchrun ") for line in readme)
    assert len(readme) >= 6, readme
    docs = [(where, line) for where, line in COMMANDS if where.startswith("docs/")]
    assert len(docs) > 60, len(docs)
    assert len({where for where, _ in docs}) >= 10, sorted({where for where, _ in docs})
    assert ("docs/kv-compression.md", "python bench.py --mode=kv --out_dir=out-learned --out_dir=out-rope "
            "--out_dir=out-gqa2 --out_dir=out-mqa --out_dir=out-sssl16 --out_dir=out-kvshare2 "
            "--out_dir=out-none --out_dir=out-linear --out_dir=out-xl0 --out_dir=out-xl32 "
            "--out_dir=out-xl64 --kv_sequences=8 --kv_length=256 --report_dir=assets") in docs
    assert any(where == "sample.py" for where, _ in COMMANDS)
    assert len(COMMANDS) > 120, len(COMMANDS)


@pytest.mark.parametrize("where,line", COMMANDS, ids=[f"{w}: {l[:60]}" for w, l in COMMANDS])
def test_command_line_works_as_printed(where, line, monkeypatch, tmp_path):
    script, args = split_command(line)
    path = REPO / script
    assert path.is_file(), f"{where}: {line!r} runs {script}, which does not exist"
    relative = path.relative_to(REPO).as_posix()
    name = "prepare.py" if re.fullmatch(r"data/[^/]+/prepare\.py", relative) else relative
    monkeypatch.chdir(REPO)  # as printed: from the repo root
    out = io.StringIO()
    if name in CONFIGURED:
        monkeypatch.setenv("NANOGPT_DRY_RUN", "1")
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(path), run_name="__main__")
        assert exit_info.value.code in (0, None), f"{where}: {line!r}\n{out.getvalue()}"
        assert "dry run: the settings are valid" in out.getvalue()
    else:
        assert name in ARGPARSE or name == "prepare.py", f"{where}: don't know how to check {script}"
        monkeypatch.setattr(sys, "argv", [str(path), "--help"])
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            runpy.run_path(str(path), run_name="__main__")
        options = [a.split("=")[0] for a in args if a.startswith("--")]
        for option in options:
            assert re.search(rf"{re.escape(option)}\b", out.getvalue()), \
                f"{where}: {line!r}: {script} has no option {option}\n{out.getvalue()}"


def test_dry_run_catches_a_wrong_line(monkeypatch):
    """The check above can fail: a misspelt key and a config file that doesn't exist."""
    for args in (["config/train_don_char.py", "--lerning_rate=1e-3"], ["config/cpu.py"]):
        monkeypatch.setenv("NANOGPT_DRY_RUN", "1")
        monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), *args])
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "train.py"), run_name="__main__")
        assert exit_info.value.code not in (0, None), args


def test_coming_from_another_fork_mappings(monkeypatch, tmp_path):
    """docs/coming-from.md's tables, checked: Hydra-style launch lines,
    --dataset as a path, a prepare script run from data/, model.predict's equivalent."""
    import torch
    from model import GPT, GPTConfig

    out = io.StringIO()
    monkeypatch.setenv("NANOGPT_DRY_RUN", "1")
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), "--config-path=config",
                                      "--config-name=finetune_shakespeare", f"--dataset={tmp_path}"])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    assert e.value.code in (0, None), out.getvalue()
    assert "init_from = 'gpt2-xl'" in out.getvalue() and f"dataset = {str(tmp_path)!r}" in out.getvalue()

    # cd data; python openwebtext/prepare.py --help: the script finds the repo's modules from there
    monkeypatch.chdir(REPO / "data")
    monkeypatch.setattr(sys, "argv", ["openwebtext/prepare.py", "--help"])
    with contextlib.redirect_stdout(io.StringIO()) as help_text, pytest.raises(SystemExit):
        runpy.run_path("openwebtext/prepare.py", run_name="__main__")
    assert "--files" in help_text.getvalue()

    # model.predict(idx) == every position's logits, the same as the training forward computes
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)).eval()
    idx = torch.randint(11, (2, 8))
    every, _ = model(idx, all_logits=True)
    with_targets, _ = model(idx, idx)
    assert every.shape == (2, 8, 11)
    torch.testing.assert_close(every, with_targets)
    torch.testing.assert_close(model(idx)[0], every[:, -1:, :])
