"""
Weights in fewer bytes for decoding (weights_dtype): a cached decoding step multiplies one token
by every weight matrix, so its time is the time to stream the weights from memory. Storing them
in int8 (per output channel scales) or bf16 moves 4x or 2x fewer bytes per token; at
train_don_char.py's shape the int8 model (11 MB) also fits in a server CPU's L3 cache, where
fp32 (42 MB) does not.

    quantize_weights(model, "int8")     # every nn.Linear of the model, in place, for inference
    weights_nbytes(model)               # what one decoding step streams

What it is not: quantisation-aware training, or a change to the checkpoint. The training
checkpoint keeps its fp32 weights; this turns a loaded model's Linear layers into inference-only
copies. The token embedding (wte) stays as it is: a lookup reads one row per token. The output
head shares wte's weight in training (weight tying); quantising it gives the head its own copy.
"""

import torch
import torch.nn as nn
from torch.nn import functional as F

WEIGHTS_DTYPES = ("float32", "bfloat16", "int8")
# torch's int8 weight-only matmul for CPUs (aten, torch >= 2.4); without it int8 dequantises
INT8_KERNEL = hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x W^T * s + b with W stored as int8 (out, in) and one fp32 scale per output row:
    s = max |row| / 127, so each row keeps its own range (a per-tensor scale would let one large
    row flatten the others to a few levels)."""

    def __init__(self, linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        # named `weight` like the Linear it replaces (callers read its .device), but int8
        self.register_buffer("weight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)  # the kernel's
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        rows = x.numel() // self.in_features
        if self.use_int8_kernel(x, rows):
            # torch's CPU int8 weight-only matmul: bf16 activations times the int8 rows, scaled
            # inside the kernel, so the weights stream as 1 byte each and are never expanded.
            # One token through a 384 x 1536 matrix: 2.6x faster than fp32's F.linear, 4x the
            # dequantising path below (AMD EPYC, docs/performance.md). The activations round to
            # bf16 as Bf16Linear's do.
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, self.in_features).to(torch.bfloat16),
                                                   self.weight, self.scale_bf16)
            y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            # Dequantise one matrix at a time into the input's dtype: the int8 copy is what stays
            # in memory; the float copy lives only for this matmul. The per-row scale is applied
            # to the (.., out) result, which is exact: (x W_q^T) * s = x (W_q * s)^T.
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def use_int8_kernel(self, x, rows):
        """The kernel runs on a CPU, for a decoding step's few rows (a long prefill is faster
        through fp32's matmul), and only where its shape rule holds: in_features a multiple of
        32 (torch 2.13's kernel reads 16 at a time and crashes on other widths)."""
        return (INT8_KERNEL and x.device.type == "cpu" and rows <= 64
                and self.in_features % 32 == 0 and self.weight.is_contiguous())

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


class Bf16Linear(nn.Module):
    """A Linear whose weight is stored in bf16; the input is cast to bf16 for the matmul and the
    output back to the input's dtype, so the rest of the model runs unchanged in fp32."""

    def __init__(self, linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def quantize_weights(model, weights_dtype):
    """Replace every nn.Linear inside `model` by an int8 or bf16 inference copy (in place) and
    return the model; 'float32' leaves it as it is. The model is put in eval mode: these layers
    have no gradients."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {weights_dtype!r}")
    if weights_dtype == "float32":
        return model
    make = Int8Linear if weights_dtype == "int8" else Bf16Linear
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return model.eval()


def weights_nbytes(model):
    """Bytes of every weight a decoding step reads: the Linear layers (whatever their storage)
    and the norms; the embedding tables count one row per token, so they are left out."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            continue  # a tied output head is counted below, as the Linear that reads it all
        buffers = [b for name, b in m.named_buffers(recurse=False)
                   if name not in m._non_persistent_buffers_set]  # scale_bf16: a copy of scale
        for t in list(m.parameters(recurse=False)) + buffers:
            total += t.numel() * t.element_size()
    return total
