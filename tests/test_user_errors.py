"""
A user's mistake gets one line that names the problem and the fix, a non-zero exit and nothing
lost; start-up lines tell the truth. Each test runs a script the way a user does (a subprocess
from a temp folder) with a path or a setting that is wrong in a way people hit: a train.bin cut
short, an --out_dir that is a file, a --dataset that is a text file, the hub out of reach, an
error under torchrun, an out_dir that holds another run.

    python -m pytest tests/test_user_errors.py -q
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, error_lines, run_script, run_train, script_env, train_args


def one_line_error(result):
    """The single error line of a failed run (configurator's 'Overriding' echo aside)."""
    assert result.returncode != 0, result.stdout[-2000:]
    lines = error_lines(result.stderr)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(("error:", "plot.py:")), result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def cut_dataset(char_dataset, tmp_path):
    """A copy of the tiny dataset whose train.bin lost its last byte (a full disk, a bad copy)."""
    folder = tmp_path / "cut"
    shutil.copytree(char_dataset, folder)
    data = (folder / "train.bin").read_bytes()
    (folder / "train.bin").write_bytes(data[:-1])
    return folder


def test_train_bin_cut_short_is_one_line(cut_dataset, tmp_path):
    message = one_line_error(run_train(cut_dataset, tmp_path / "out", "--max_iters=2", cwd=tmp_path))
    assert str(cut_dataset / "train.bin") in message and "not a whole number of uint16 tokens" in message
    assert "re-create it" in message
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_bench_names_a_cut_train_bin(cut_dataset, tmp_path):
    result = run_script("bench.py", f"--dataset={cut_dataset}", "--device=cpu", "--num_iters=1",
                        "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "not a whole number of uint16 tokens" in result.stderr


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_out_dir_that_is_a_file(char_dataset, tmp_path, where):
    (tmp_path / "notes.txt").write_text("keep me")
    out_dir = tmp_path / "notes.txt" if where == "file" else tmp_path / "notes.txt" / "run"
    message = one_line_error(run_train(char_dataset, out_dir, "--max_iters=2", cwd=tmp_path))
    assert "--out_dir=" in message and "notes.txt" in message and "pass another --out_dir" in message
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_dataset_that_is_a_text_file(char_dataset, tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("some text\n" * 100)
    message = one_line_error(run_train(text, tmp_path / "out", "--max_iters=2", cwd=tmp_path))
    assert "is a file" in message and f"prepare.py --input={text}" in message


def test_dataset_folder_relative_to_the_working_directory(char_dataset, tmp_path):
    """--dataset=NAME finds data/NAME first (nanoGPT), else a folder NAME where the user is."""
    shutil.copytree(char_dataset, tmp_path / "mydata")
    result = run_script("train.py", *train_args("mydata", tmp_path / "out", "--max_iters=1")[1:],
                        "--dataset=mydata", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_prepare_input_that_is_a_folder(tmp_path):
    result = run_script("data/shakespeare_char/prepare.py", f"--input={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: --input={tmp_path} is a folder; pass the text file itself"


def test_export_to_a_file(trained_run, tmp_path):
    out_dir, _ = trained_run
    (tmp_path / "hf").write_text("x")
    message = one_line_error(run_script("export.py", f"--out_dir={out_dir}", f"--hf_dir={tmp_path / 'hf'}",
                                        cwd=tmp_path))
    assert "--hf_dir=" in message and "is a file" in message


def test_plot_out_under_a_file(trained_run, tmp_path):
    out_dir, _ = trained_run
    (tmp_path / "a").write_text("x")
    result = run_script("plot.py", str(out_dir), f"--out={tmp_path / 'a' / 'c.png'}", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "is a file, not a folder" in result.stderr


def test_missing_checkpoint_names_the_ones_there(trained_run, tmp_path):
    """sample.py and train.py --init_from=resume: a checkpoint name that isn't there gets the
    list of those that are (a folder named like one is not offered)."""
    out_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], out_dir)
    (out_dir / "old.pt").mkdir()
    message = one_line_error(run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu",
                                        "--checkpoint_name=best", cwd=tmp_path))
    assert message.startswith(f"error: no checkpoint at {out_dir / 'best.pt'}; ")
    assert "has ckpt.pt, last.pt: pick one" in message and "old.pt" not in message
    dataset = [a for a in trained_run[1].args if str(a).startswith("--dataset=")][0]
    message = one_line_error(run_script("train.py", dataset, f"--out_dir={out_dir}", "--device=cpu",
                                        "--dtype=float32", "--init_from=resume", "--resume_checkpoint_name=best",
                                        cwd=tmp_path))
    assert "has ckpt.pt, last.pt: pick one" in message
    message = one_line_error(run_script("sample.py", f"--out_dir={tmp_path / 'nowhere'}",
                                        "--device=cpu", cwd=tmp_path))
    assert "train a model first" in message


def test_prompt_file_not_utf8(trained_run, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Se\xf1or".encode("latin-1"))
    message = one_line_error(run_script("sample.py", f"--out_dir={trained_run[0]}", "--device=cpu",
                                        "--start=FILE:latin1.txt", cwd=tmp_path))
    assert "latin1.txt is not valid UTF-8 (byte 2" in message and "re-save it as UTF-8" in message


def test_a_cache_setting_the_model_cannot_take_fails_before_any_output(trained_run, tmp_path):
    """kv_sink on a learned-position model: one line, and not a word of the sample (the prompt
    used to be printed first, as the stream starts)."""
    result = run_script("sample.py", f"--out_dir={trained_run[0]}", "--device=cpu", "--kv_sink=2",
                        "--start=Sancho", "--num_samples=1", cwd=tmp_path)  # one sample streams
    assert "kv_sink needs pos_emb 'rope' or 'none'" in one_line_error(result)
    assert result.stdout == ""


# ----------------------------------------------------------------------------- offline hub

def offline_env(tmp_path):
    """No GPT-2 in the local cache, and a hub address that refuses at once (as offline does)."""
    return script_env(HF_HOME=tmp_path / "hf-home", HF_ENDPOINT="http://127.0.0.1:9",
                      HF_HUB_OFFLINE="", TRANSFORMERS_OFFLINE="", HTTPS_PROXY="", https_proxy="")


@pytest.mark.parametrize("script", ["sample.py", "train.py"])
def test_gpt2_weights_offline_fail_at_once(char_dataset, tmp_path, script):
    args = ["--init_from=gpt2", "--device=cpu", "--max_new_tokens=2"] if script == "sample.py" else \
        train_args(char_dataset, tmp_path / "out", "--init_from=gpt2-xl")
    if script == "train.py":  # a BPE-looking dataset, so the weights are what fails
        shutil.copytree(char_dataset, tmp_path / "bpe")
        (tmp_path / "bpe" / "meta.json").unlink()
        args = train_args(tmp_path / "bpe", tmp_path / "out", "--init_from=gpt2-xl")
    result = run_script(script, *args, cwd=tmp_path, env=offline_env(tmp_path))
    message = one_line_error(result)
    assert "not in the local Hugging Face cache and the hub can't be reached" in message
    assert "--init_from=/path/to/dir" in message
    # the hub client's retries (~25 s, one warning each) are skipped, not waited out
    assert "Retrying" not in result.stderr + result.stdout


def test_openwebtext_offline_fails_at_once(tmp_path):
    from conftest import gpt2_bpe_missing
    if gpt2_bpe_missing():  # the tokenizer is checked first, with its own one-line error
        pytest.skip(gpt2_bpe_missing())
    env = offline_env(tmp_path)
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets-cache")
    result = run_script("data/openwebtext/prepare.py", f"--out_dir={tmp_path / 'owt'}", cwd=tmp_path,
                        env=env)
    assert result.returncode != 0
    assert "Retrying" not in result.stderr
    assert "not in the local Hugging Face cache and the hub can't be reached" in result.stderr
    assert "--files=GLOB" in result.stderr


# ----------------------------------------------------------------------------- start-up lines

def tokens_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith("tokens per iteration"))


def test_tokens_per_iteration_uses_the_final_block_size(trained_run, tmp_path):
    """Resuming a block-32 model with --block_size=64 grows its learned positions to 64 (it
    used to cap block_size at 32 instead); the start-up line says 4 x 64 tokens, once
    block_size is final."""
    out_dir, _ = trained_run
    run = tmp_path / "out"
    shutil.copytree(out_dir, run)
    dataset = [a for a in trained_run[1].args if str(a).startswith("--dataset=")][0]
    result = run_script("train.py", *train_args(dataset.split("=", 1)[1], run, "--init_from=resume",
                                                "--max_iters=21", "--eval_interval=100",
                                                "--block_size=64")[1:], dataset, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tokens_line(result.stdout).startswith("tokens per iteration: 256 (1 micro-batch of 4 x 64")


def test_overwriting_another_run_is_announced(char_dataset, tmp_path):
    out_dir = tmp_path / "out"
    assert run_train(char_dataset, out_dir, "--max_iters=2", "--eval_interval=2", cwd=tmp_path).returncode == 0
    first = (out_dir / "ckpt.pt").read_bytes()
    # another shape into the same folder: warned at the start, before any training
    result = run_train(char_dataset, out_dir, "--max_iters=0", "--n_embd=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "ckpt.pt and last.pt of an earlier run (iteration 2; n_embd 32 -> 16)" \
        in warning[0], result.stderr
    assert "--init_from=resume" in warning[0]
    assert (out_dir / "ckpt.pt").read_bytes() == first  # max_iters=0 only evaluated: nothing replaced
    # resuming the run in that folder is not an overwrite: no warning
    result = run_train(char_dataset, out_dir, "--max_iters=2", "--init_from=resume", cwd=tmp_path)
    assert result.returncode == 0 and "warning:" not in result.stderr, result.stderr[-2000:]


# ----------------------------------------------------------------------------- torchrun

def test_parallel_setting(char_dataset, tmp_path):
    message = one_line_error(run_train(char_dataset, tmp_path / "out", "--parallel=zero3",
                                       "--max_iters=2", cwd=tmp_path))
    assert "parallel='zero3'" in message and "'ddp' or 'fsdp'" in message
    # FSDP without torchrun: one process, said so, trained as usual
    result = run_train(char_dataset, tmp_path / "out", "--parallel=fsdp", "--max_iters=2",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parallel='fsdp' without torchrun: one process" in result.stderr
    assert "iter 2:" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mistake", ["config", "data", "fsdp_compile"])
def test_error_under_torchrun_printed_once(cut_dataset, char_dataset, tmp_path, mistake):
    args = {
        "config": train_args(char_dataset, tmp_path / "out", "--max_iters=2", "--lerning_rate=1"),
        "data": train_args(cut_dataset, tmp_path / "out", "--max_iters=2",
                           "--gradient_accumulation_steps=2"),
        "fsdp_compile": train_args(char_dataset, tmp_path / "out", "--max_iters=2",
                                   "--gradient_accumulation_steps=2", "--parallel=fsdp",
                                   "--compile=True"),
    }[mistake]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(REPO / "train.py"), *map(str, args)],
                            cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    expected = {"config": "unknown config key(s): lerning_rate", "data": "not a whole number",
                "fsdp_compile": "parallel='fsdp' with compile=True"}[mistake]
    assert len(errors) == 1 and expected in errors[0], output[-3000:]
    # torchrun prints its own ChildFailedError summary; no traceback may come from train.py
    assert 'train.py", line' not in output, output[-3000:]
    # every rank stopped: each exited non-zero by itself, or was stopped by torchrun after rank 0
    assert "rank      : 1" in output or "local_rank: 1" in output, output[-3000:]


def test_help_into_a_closed_pipe(tmp_path):
    """`python train.py --help | head -3`: the reader stops early; no BrokenPipeError page.
    Here the reader is gone before the first write, the worst case of the same thing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], cwd=tmp_path,
                              env=script_env(), stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode()[-2000:]


def test_sample_into_a_closed_pipe(trained_run, tmp_path):
    """`python sample.py ... | head`: streaming or not, a reader that stops is not an error."""
    out_dir, _ = trained_run
    for num_samples in ("1", "2"):  # 1 streams, 2 prints at the end
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--out_dir={out_dir}",
                                   "--device=cpu", f"--num_samples={num_samples}",
                                   "--max_new_tokens=50"], cwd=tmp_path, env=script_env(),
                                  stdout=write_end, stderr=subprocess.PIPE, timeout=120)
        finally:
            os.close(write_end)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode()[-2000:]


@pytest.mark.parametrize("script", ["train.py", "bench.py", "sample.py"])
def test_unknown_dtype_is_one_line(trained_run, char_dataset, tmp_path, script):
    args = {"train.py": train_args(char_dataset, tmp_path / "out"),
            "bench.py": ["--device=cpu", "--quick=True"],
            "sample.py": [f"--out_dir={trained_run[0]}", "--device=cpu"]}[script]
    result = run_script(script, *args, "--dtype=fp32", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "dtype must be auto, float32, bfloat16 or float16, got 'fp32'" in result.stderr
