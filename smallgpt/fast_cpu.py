"""
CPU speed-ups that keep the math (train.py's fast_cpu setting), behind the names model.py uses:

- Dropout: nn.Dropout with a cheaper random mask on the CPU (the same torch random stream).
- causal_bias: the (T, T) additive causal mask of the attention's batched-matmul path, made once
  per length, dtype and device instead of once per layer per step.

model.py's CausalSelfAttention picks between torch's fused kernel and its own batched matmuls;
model.set_fast_cpu turns these speed-ups off (torch's own kernels, nanoGPT's CPU path).
What it is not: a model; it holds no weights.
"""

import torch
import torch.nn as nn


class _Mask(torch.autograd.Function):
    """y = x * mask, and the same mask on the way back (mask already holds 0 or 1/(1-p))."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class Dropout(nn.Dropout):
    """nn.Dropout with a faster mask on the CPU.

    torch's CPU dropout draws one random number per element (bernoulli_), which took about a
    quarter of a bf16 training step of train_don_char.py here. This draws 64 random bits at a
    time and cuts them into four 16-bit numbers, so each element is dropped with probability
    round(p * 65536) / 65536 (0.2 -> 0.20000) from the same torch random stream. Other devices
    keep torch's own kernel.
    """

    fast_cpu = True  # False = torch's kernel everywhere (nanoGPT's path; train.py --fast_cpu=False)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x  # what nn.Dropout returns then, without a dispatch per call while decoding
        if not (self.fast_cpu and x.device.type == "cpu"):
            return super().forward(x)
        if self.p >= 1:
            return torch.zeros_like(x)
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
        cut = round(self.p * 65536) - 32768
        scale = 1.0 / (1.0 - (cut + 32768) / 65536)  # P(keep) = 1 - round(p * 65536) / 65536
        # 0 or scale in x's dtype; a 0/1 byte conversion then a multiply is 5x faster than
        # torch.where(draws >= cut, scale, 0) with scalar operands on a CPU
        mask = (draws >= cut).view(torch.uint8).to(x.dtype).mul_(scale)
        return _Mask.apply(x, mask)


_CAUSAL_BIAS = {}


def causal_bias(T, dtype, device):
    """(T, T) additive causal mask, 0 on and below the diagonal and -inf above; made once."""
    key = (T, dtype, str(device))
    if key not in _CAUSAL_BIAS:
        with torch.inference_mode(False):  # a normal tensor, even if first made while sampling
            allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            _CAUSAL_BIAS[key] = torch.zeros(T, T, dtype=dtype, device=device).masked_fill_(
                ~allowed, float("-inf"))
    return _CAUSAL_BIAS[key]
