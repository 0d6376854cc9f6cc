"""
Weight-only quantised decoding (weights_dtype, smallgpt/quantize.py): int8 per-row scales against
a numpy reference, bytes per token from the model's shape, cached decoding of a quantised model
against its own full forward, and sample.py / eval.py with --weights_dtype. CPU, ~20 s.

    python -m pytest tests/test_quantize.py -q
"""

import copy
import json

import numpy as np
import pytest
import torch

from conftest import error_lines, run_script
from model import GPT, GPTConfig
from smallgpt.quantize import INT8_KERNEL, Int8Linear, quantize_weights, weights_nbytes


def test_int8_linear_is_the_per_row_rounding_of_the_definition():
    """W ~ q * s with s = max|row| / 127 and q = round(W / s): computed here in float64 numpy."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 20)
    with torch.no_grad():
        linear.weight[3] *= 50  # one large row must not flatten the others (per-row scales)
    w = linear.weight.detach().double().numpy()
    s = np.abs(w).max(axis=1) / 127
    q = np.round(w / s[:, None])
    layer = Int8Linear(linear)
    assert np.array_equal(layer.weight.numpy(), q.astype(np.int8))
    assert np.abs(q).max(axis=1).tolist() == [127] * 20  # every row uses its whole range
    x = torch.randn(5, 48)
    expected = x.double().numpy() @ (q * s[:, None]).T + linear.bias.detach().double().numpy()
    np.testing.assert_allclose(layer(x).double().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not INT8_KERNEL, reason="this torch has no aten._weight_int8pack_mm")
def test_int8_kernel_path_is_the_definition_with_bf16_activations():
    """A decoding step's few rows go through torch's int8 weight-only kernel: the same int8 rows
    and per-row scales, with the activations (and the scales) rounded to bf16 as the kernel
    takes them; its result is bf16, so the reference allows bf16's rounding (2^-8, and 1e-3 of the largest for sums near 0). A long
    prefill takes the exact dequantising path."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24)
    layer = Int8Linear(linear)
    x = torch.randn(3, 64)
    assert layer.use_int8_kernel(x, 3) and not layer.use_int8_kernel(torch.randn(65, 64), 65)
    q = layer.weight.double().numpy()
    s = layer.scale.to(torch.bfloat16).double().numpy()
    xb = x.to(torch.bfloat16).double().numpy()
    expected = xb @ (q * s[:, None]).T + linear.bias.detach().double().numpy()
    got = layer(x).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2 ** -8, atol=1e-3 * np.abs(expected).max())
    long = torch.randn(80, 64)  # 80 rows: the dequantising path, exact in fp32
    exact = long.double().numpy() @ (q * layer.scale.double().numpy()[:, None]).T \
        + linear.bias.detach().double().numpy()
    np.testing.assert_allclose(layer(long).double().numpy(), exact, rtol=1e-5, atol=1e-5)


def test_bytes_per_token_follow_the_shape():
    """What a decoding step streams: the Linear weights (int8 plus a fp32 scale per row, or bf16)
    and the fp32 LayerNorm weights; the embedding lookups are not counted, the tied head is."""
    L, C, V = 3, 64, 70
    model = GPT(GPTConfig(n_layer=L, n_head=4, n_embd=C, block_size=32, vocab_size=V, bias=False))
    matrices = L * 12 * C * C + V * C  # qkv 3C^2, proj C^2, fc 4C^2, mlp proj 4C^2; the head
    rows = L * (3 * C + C + 4 * C + C) + V
    norms = (2 * L + 1) * C * 4  # ln_1, ln_2 per layer and ln_f, weights only (bias=False)
    assert weights_nbytes(model) == 4 * matrices + norms
    assert weights_nbytes(quantize_weights(copy.deepcopy(model), "bfloat16")) == 2 * matrices + norms
    assert weights_nbytes(quantize_weights(copy.deepcopy(model), "int8")) == matrices + 4 * rows + norms


@pytest.mark.parametrize("weights_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("variant", [{}, dict(pos_emb="rope", n_kv_head=1)])
def test_cached_decoding_of_a_quantised_model_equals_its_full_forward(weights_dtype, variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50,
                          dropout=0.0, **variant)).eval()
    fp32_logits = model(torch.arange(20).view(1, 20), all_logits=True)[0]
    model = quantize_weights(model, weights_dtype)
    out = model.generate(torch.zeros((1, 1), dtype=torch.long), 40, temperature=0)  # (1, 41)
    logits, _ = model(out[:, :-1], all_logits=True)
    assert torch.equal(logits.argmax(dim=-1), out[:, 1:])  # every cached step = the full forward
    q_logits = model(torch.arange(20).view(1, 20), all_logits=True)[0]
    assert (q_logits - fp32_logits).abs().max() < 0.05  # close to fp32, not equal


def test_a_quantised_model_refuses_a_bad_weights_dtype():
    with pytest.raises(ValueError, match="weights_dtype must be one of float32, bfloat16, int8, got 'int4'"):
        quantize_weights(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=9)), "int4")


def test_sample_and_eval_take_weights_dtype(trained_run, tmp_path):
    out_dir, _ = trained_run
    losses = {}
    for weights_dtype in ("float32", "int8"):
        result = run_script("eval.py", f"--out_dir={out_dir}", "--device=cpu", "--json=True",
                            f"--weights_dtype={weights_dtype}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["weights_dtype"] == weights_dtype
        losses[weights_dtype] = report["loss"]
    assert abs(losses["int8"] - losses["float32"]) < 0.01, losses
    sample = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1",
                        "--max_new_tokens=20", "--weights_dtype=int8", "--start=the", cwd=tmp_path)
    assert sample.returncode == 0 and sample.stdout.strip(), sample.stderr
    bad = run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--weights_dtype=int4",
                     cwd=tmp_path)
    assert bad.returncode == 1 and error_lines(bad.stderr) == \
        ["error: weights_dtype must be one of float32, bfloat16, int8, got 'int4'"], bad.stderr
