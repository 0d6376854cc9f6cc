"""
Shared pieces of the test suite: the `slow` marker, a tiny character dataset built in a temp
folder, and helpers that run the repo's scripts as a user would (a subprocess, from a temp
working directory, so nothing is ever written into the repo).

    python -m pytest tests -q              # everything, slow tests included (CI runs them too)
    python -m pytest tests -q -m "not slow"  # skip the torchrun and multi-run tests while editing

Optional offline data (tests that need it skip, with the reason, when it is missing):
    NANOGPT_TEST_DATA=DIR   a folder holding don_quixote.txt and tinyshakespeare.txt (the real
                            books: Gutenberg #996 and nanoGPT's tiny Shakespeare); default: the
                            current folder
    TIKTOKEN_CACHE_DIR=DIR  tiktoken's cache with the GPT-2 BPE files; default: DIR/tiktoken_cache
                            of the folder above when it exists, else tiktoken downloads them
"""

import functools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers (pytest-xdist -n 2) on a 2-core machine: each worker's
    # own torch must keep to one thread, as the scripts the tests start already do, or the two
    # compete for the cores and both crawl
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# A model small enough that a run of a few dozen steps takes a few seconds on one CPU core.
# float32 (not 'auto', which picks bf16 on CPUs with AMX) so results don't depend on the machine;
# a fixed peak_flops skips the half-second matmul benchmark at start.
TINY = ["--device=cpu", "--compile=False", "--dtype=float32", "--peak_flops=1e12",
        "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--eval_iters=2", "--gradient_accumulation_steps=1", "--log_interval=1",
        "--learning_rate=1e-2", "--warmup_iters=0", "--lr_decay_iters=1000", "--min_lr=1e-3"]

WORDS = ("the knight rode out at dawn and his squire followed on a grey donkey while the windmills "
         "turned slowly over the plain of la mancha where nobody had ever seen a giant").split()


# ----------------------------------------------------------------------------- offline data
TEXT_FILES = ("don_quixote.txt", "tinyshakespeare.txt")


def _find_test_data():
    """$NANOGPT_TEST_DATA, else the current folder; last, the shared/data folder that this
    project's CI keeps beside the repo (a user's clone has none, and then the tests skip)."""
    if os.environ.get("NANOGPT_TEST_DATA"):
        return Path(os.environ["NANOGPT_TEST_DATA"]).expanduser()
    for folder in (Path.cwd(), REPO.parent / "shared" / "data"):
        if any((folder / name).is_file() for name in TEXT_FILES):
            return folder
    return Path.cwd()


TEST_DATA = _find_test_data()
if not os.environ.get("TIKTOKEN_CACHE_DIR") and (TEST_DATA / "tiktoken_cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(TEST_DATA / "tiktoken_cache")  # subprocesses inherit it


def text_file(name):
    """The path of one of TEXT_FILES, or a skip that says how to provide it."""
    path = TEST_DATA / name
    if not path.is_file():
        pytest.skip(f"{name} not found in {TEST_DATA}; set NANOGPT_TEST_DATA to a folder that has it")
    return str(path)


@functools.lru_cache(maxsize=None)
def gpt2_bpe_missing():
    """None when tiktoken can load GPT-2's BPE (from TIKTOKEN_CACHE_DIR, its own cache or a
    download), else why not: the reason a test that needs it is skipped."""
    try:
        import tiktoken
        tiktoken.get_encoding("gpt2")
        return None
    except Exception as e:  # ImportError, or a download that failed (offline, no cache)
        where = os.environ.get("TIKTOKEN_CACHE_DIR") or "tiktoken's default cache"
        return (f"GPT-2 BPE files not available ({type(e).__name__}; looked in {where}); set "
                f"TIKTOKEN_CACHE_DIR to a tiktoken cache that holds them, or go online once")


needs_gpt2_bpe = pytest.mark.skipif(gpt2_bpe_missing() is not None, reason=str(gpt2_bpe_missing()))


def skip_without_gpt2_bpe():
    reason = gpt2_bpe_missing()
    if reason:
        pytest.skip(reason)


def randomize_weights(model, seed=0, std=0.3):
    """Every weight N(0, std) (LayerNorm gains N(1, std)), far from GPT-2's small init: logits
    are O(1)-O(10), attention is peaked, so a wrong mask or position moves them visibly and
    greedy choices are not near-ties. Works on our GPT (ln_*) and on a Hugging Face model whose
    LayerNorms are named *norm. Returns the model."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "ln_" in name or "norm" in name
            gain = 1.0 if is_norm and name.endswith(".weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + gain)
    return model


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s or starts torchrun; "
                                       "still run in CI, deselect with -m 'not slow'")
    config.addinivalue_line("markers", "cpu_bf16: depends on whether the CPU has bf16 units "
                                       "(dtype='auto'); .ci/run also runs these with "
                                       "NANOGPT_CPU_BF16=1 and =0")


def make_text(n_chars=40_000, seed=0):
    """A deterministic text with some structure (words, sentences, lines) for a char model."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        line = sentence[0].upper() + sentence[1:] + rng.choice([".", ",", "!", "?"])
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def char_dataset(tmp_path_factory):
    """A prepared character-level dataset folder (train.bin, val.bin, meta.json), built by
    smallgpt.prepare.prepare_char from a generated text, as data/<name>/prepare.py --input=... would."""
    import smallgpt.prepare

    root = tmp_path_factory.mktemp("dataset")
    text = make_text()
    (root / "input.txt").write_text(text, encoding="utf-8")
    dataset_dir = root / "tinychar"
    dataset_dir.mkdir()
    smallgpt.prepare.prepare_char(str(dataset_dir), None, [f"--input={root / 'input.txt'}"])
    return dataset_dir


@pytest.fixture(scope="session")
def vocab(char_dataset):
    return sorted(set(make_text()))


def script_env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               MPLBACKEND="Agg", WANDB_MODE="offline")
    env.pop("RANK", None)  # never inherit a torchrun environment
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script, *args, cwd, env=None, timeout=180):
    """Run <repo>/<script> with this Python from `cwd`; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          env=env or script_env(), capture_output=True, text=True, timeout=timeout)


def start_script(script, *args, cwd, stdout_path, env=None):
    """Start <repo>/<script> in the background; stdout and stderr go to `stdout_path`."""
    out = open(stdout_path, "w")
    try:
        return subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                                env=env or script_env(), stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()  # the child holds its own copy


def train_args(dataset_dir, out_dir, *extra):
    return [f"--dataset={dataset_dir}", f"--out_dir={out_dir}", *TINY, *extra]


def run_train(dataset_dir, out_dir, *extra, cwd, env=None, timeout=180):
    return run_script("train.py", *train_args(dataset_dir, out_dir, *extra), cwd=cwd, env=env,
                      timeout=timeout)


def error_lines(stderr):
    """The non-empty lines of stderr, less configurator.py's 'Overriding ...' echo of the
    settings (informational, on stderr so stdout stays clean)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("Overriding")]


@pytest.fixture(scope="session")
def trained_run(char_dataset, tmp_path_factory):
    """One tiny run of 20 iterations (evals at 0, 10, 20), shared by the tests that only read its
    out_dir. Tests that change files must copy the folder first (copy_run)."""
    root = tmp_path_factory.mktemp("trained")
    out_dir = root / "out"
    result = run_train(char_dataset, out_dir, "--max_iters=20", "--eval_interval=10", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return out_dir, result


@pytest.fixture
def recorded_logits(monkeypatch):
    """Every (B, V) logits tensor smallgpt.generate.generate_stream hands to sample_next, in order."""
    import smallgpt.generate
    seen = []
    real = smallgpt.generate.sample_next

    def recording(logits, *args, **kwargs):
        seen.append(logits.detach().clone())
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(smallgpt.generate, "sample_next", recording)
    return seen


def run_notebook(name, cwd, **env):
    """examples/<name> run top to bottom in a real Jupyter kernel (nbclient) started in `cwd`,
    with `env` added to the environment the kernel inherits (the checkout on PYTHONPATH, one
    thread unless set); restored afterwards. Returns the executed notebook and its code cells'
    printed text. Skips when nbclient is missing or no kernel can start; a failing cell fails."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    notebook = nbformat.read(REPO / "examples" / name, as_version=4)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute()
        except (NoSuchKernel, DeadKernelError) as e:  # a cell's error is not one of these
            pytest.skip(f"no Jupyter kernel could start here: {e}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    return notebook, outputs


def has_image(notebook):
    """Whether a code cell of an executed notebook shows a PNG (a plot)."""
    return any("image/png" in o.get("data", {}) for cell in notebook.cells
               if cell.cell_type == "code" for o in cell.get("outputs", []))
