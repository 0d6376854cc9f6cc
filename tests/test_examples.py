"""
The example scripts and notebooks for the courses: examples/draw_architecture.py (the README's
picture, drawn from model.py) and examples/don_quixote.ipynb (the DI725 course's first hour), run
as a user runs them, with small settings.

    python -m pytest tests/test_examples.py -q
"""


import pytest

from conftest import REPO, has_image, run_notebook, run_script, text_file


def test_draw_architecture_reads_the_model(tmp_path):
    """The picture is drawn from the module tree: a GQA rope model's boxes say its own shapes
    (c_attn 64 -> 64 + 2 x 1 x 16 outputs with one K/V head of 16), not GPT-2's."""
    done = run_script("examples/draw_architecture.py", f"--output={tmp_path / 'gpt2.png'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gpt2.png").stat().st_size > 10_000
    import runpy
    import sys
    argv = sys.argv
    sys.argv = ["draw_architecture.py", "--n_layer=2", "--n_head=4", "--n_embd=64", "--pos_emb=rope",
                "--n_kv_head=1", f"--output={tmp_path / 'gqa.png'}"]
    try:
        script = runpy.run_path(str(REPO / "examples" / "draw_architecture.py"))
    finally:
        sys.argv = argv
    stem, block, head, layers = script["describe"](script["build"]())
    text = " ".join(detail for _, detail in stem + block + head)
    assert layers == 2 and "c_attn 64 \u2192 96" in text and "1 K/V heads" in text and "rotary" in text
    assert not any(name.startswith("+ wpe") for name, _ in stem)


@pytest.mark.slow
def test_don_quixote_notebook_runs(tmp_path):
    """examples/don_quixote.ipynb end to end in a Jupyter kernel: the book prepared from the
    test data, 30 iterations of the CPU preset, the plot, a sample, the GPT-2 part skipped."""
    book = text_file("don_quixote.txt")
    notebook, outputs = run_notebook(
        "don_quixote.ipynb", tmp_path, DON_TEXT=book, DON_DATASET=str(tmp_path / "don_char"),
        DON_OUT_DIR="out", DON_MAX_ITERS="30", DON_EVAL_ITERS="2", DON_FINETUNE_GPT2="0")
    assert "val loss" in outputs and "DON QUIXOTE" in outputs and "skipped: DON_FINETUNE_GPT2=0" in outputs
    assert has_image(notebook)
    assert (tmp_path / "out" / "ckpt.pt").is_file() and (tmp_path / "don_char" / "val.bin").is_file()
