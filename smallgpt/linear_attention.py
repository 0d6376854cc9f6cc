"""
Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax(q k^T) is replaced
by phi(q) phi(k)^T with the positive feature map phi(x) = elu(x) + 1, so a query's output is

    y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),  S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j)

The division by phi(q_i)^T z_i (a weighted mean of the values, as softmax's rows sum to one) is
what keeps it trainable: without it the output grows with the number of tokens seen. S (d x d)
and z (d) per head are all a decoder has to keep, however long the sequence.

Two forms of the same numbers, used by model.py (training, prefill) and kvcache.py's LinearState
(decoding):
- causal_linear_attention: chunks of `chunk` tokens; inside a chunk the masked (T x T) scores,
  across chunks the running state. O(T * chunk * d + T * d^2) time, no T x T matrix.
- linear_attention_step: one token, S and z updated in place of a KV cache.

What it is not: a model (the projections, heads and positions are model.py's).
"""

import torch
import torch.nn.functional as F

EPS = 1e-6  # the normaliser is > 0 (phi > 0); this only guards a query that saw no keys


def feature_map(x):
    """phi(x) = elu(x) + 1 > 0: every score and so every normaliser is positive."""
    return F.elu(x) + 1


def causal_linear_attention(q, k, v, chunk=64, state=None):
    """q, k (B, H, T, d) already through feature_map, v (B, H, T, dv) -> y (B, H, T, dv) and the
    state after the last token, (S (B, H, d, dv), z (B, H, d)). `state` continues an earlier
    call (None = no tokens before). Computed in fp32: the running sums are long additions."""
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    B, H, T, d = q.shape
    dv = v.size(-1)
    n = -(-T // chunk)
    pad = n * chunk - T  # zero keys add nothing to S and z; padded queries are dropped below
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qc, kc, vc = (t.view(B, H, n, chunk, t.size(-1)) for t in (q, k, v))  # (B, H, n, c, .)
    kv = kc.transpose(-1, -2) @ vc                   # (B, H, n, d, dv): each chunk's sum k v^T
    ksum = kc.sum(3)                                 # (B, H, n, d)
    S_before = kv.cumsum(2) - kv                     # state entering each chunk
    z_before = ksum.cumsum(2) - ksum
    if state is not None:
        S_before = S_before + state[0].float()[:, :, None]
        z_before = z_before + state[1].float()[:, :, None]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    scores = (qc @ kc.transpose(-1, -2)) * causal    # (B, H, n, c, c), inside the chunk
    num = qc @ S_before + scores @ vc                # (B, H, n, c, dv)
    den = (qc @ z_before.unsqueeze(-1)).squeeze(-1) + scores.sum(-1)  # (B, H, n, c)
    y = (num / (den.unsqueeze(-1) + EPS)).reshape(B, H, n * chunk, dv)[:, :, :T]
    S = S_before[:, :, -1] + kv[:, :, -1]            # (B, H, d, dv)
    z = z_before[:, :, -1] + ksum[:, :, -1]          # (B, H, d)
    return y.to(dtype), (S, z)


def linear_attention_step(q, k, v, S, z):
    """One new token per row: q, k (B, H, 1, d) through feature_map, v (B, H, 1, dv); S
    (B, H, d, dv) and z (B, H, d) are updated in place. Returns y (B, H, 1, dv)."""
    S += k.float().transpose(-1, -2) @ v.float()     # (B, H, d, dv): add k v^T
    z += k.float()[:, :, 0]
    qf = q.float()
    num = qf @ S                                     # (B, H, 1, dv)
    den = qf @ z.unsqueeze(-1)                       # (B, H, 1, 1)
    return (num / (den + EPS)).to(v.dtype)
