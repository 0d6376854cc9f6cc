"""
A picture of the GPT in model.py, drawn from the model itself: the script builds the GPT a
GPTConfig describes (on the meta device: shapes, no memory) and reads every box's label from the
module tree (each Linear's in and out features, the embedding tables, the attention variant's
heads, positions and window), so the picture changes when the model does.

    python examples/draw_architecture.py                      # GPT-2 small -> assets/architecture.png
    python examples/draw_architecture.py --pos_emb=rope --n_kv_head=2 --output=arch_rope.png
    python examples/draw_architecture.py config/train_don_char.py config/cpu_small.py --output=cpu.png

Any train.py config file or --key=value of the model's shape works (n_layer, n_head, n_embd,
block_size, vocab_size, bias, pos_emb, n_kv_head, attn_window, window_pattern, kv_share,
attention); train.py's other keys in a config file are ignored.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # model.py of this checkout

# -----------------------------------------------------------------------------
# defaults (a config file or --key=value overrides any of these): GPT-2 small
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304
bias = True
pos_emb = 'learned'  # 'learned', 'rope' or 'none'
rope_theta = 10000.0
n_kv_head = 0  # 0 = n_head
attn_window = 0
window_pattern = ''
kv_share = 1
attention = 'softmax'
output = os.path.join(REPO, 'assets', 'architecture.png')
# -----------------------------------------------------------------------------
from configurator import configure  # noqa: E402

TRAIN_KEYS = ('out_dir', 'eval_interval', 'eval_iters', 'log_interval', 'always_save_checkpoint',
              'wandb_log', 'wandb_project', 'wandb_run_name', 'dataset', 'gradient_accumulation_steps',
              'batch_size', 'dropout', 'learning_rate', 'max_iters', 'lr_decay_iters', 'min_lr',
              'beta2', 'warmup_iters', 'device', 'compile', 'init_from', 'eval_only',
              'weight_decay', 'beta1', 'grad_clip', 'decay_lr', 'dtype', 'seed')
configure(globals(), script='examples/draw_architecture.py', ignore=TRAIN_KEYS)

import torch  # noqa: E402

from model import GPT, GPTConfig, VARIANT_KEYS  # noqa: E402


def build():
    """The GPT of these settings on the meta device: every shape, no weights in memory."""
    args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                vocab_size=vocab_size, bias=bias, **{k: globals()[k] for k in VARIANT_KEYS})
    try:
        config = GPTConfig(**args)
    except ValueError as e:
        sys.exit(f"error: {e}")
    with torch.device('meta'):
        return GPT(config)


def linear(module):
    return f"{module.in_features} \u2192 {module.out_features}"


def describe(model):
    """The boxes, top to bottom, read from the module tree: (name, detail) pairs for the stem,
    for one Block, and for the head."""
    cfg, t = model.config, model.transformer
    first = t.h[0]
    attn = first.attn
    stem = [("tokens", f"(B, T) ids, T \u2264 {cfg.block_size}" if 'wpe' in t
             else "(B, T) ids (no length limit in the weights)"),
            ("wte: token embedding", f"{t.wte.num_embeddings} \u00d7 {t.wte.embedding_dim}")]
    if 'wpe' in t:
        stem.append(("+ wpe: position embedding", f"{t.wpe.num_embeddings} \u00d7 {t.wpe.embedding_dim}"))
    positions = {'rope': f"rotary q, k (theta {cfg.rope_theta:g})", 'none': "no positions",
                 'learned': "positions from wpe"}[cfg.pos_emb]
    heads = f"{attn.n_head} heads of {attn.head_dim}"
    if attn.n_kv_head != attn.n_head:
        heads += f", {attn.n_kv_head} K/V heads"
    window = f", window {cfg.attn_window}" + (f" ({cfg.window_pattern})" if cfg.window_pattern else "") \
        if cfg.attn_window else ""
    share = f", K/V shared by {cfg.kv_share} layers" if cfg.kv_share > 1 else ""
    kind = "linear attention" if cfg.attention == 'linear' else "causal self-attention"
    block = [("ln_1: LayerNorm", f"{first.ln_1.normalized_shape[0]}"),
             (f"attn: {kind}", f"c_attn {linear(attn.c_attn)}: q, k, v; {heads}\n{positions}{window}{share};"
                               f" c_proj {linear(attn.c_proj)}"),
             ("+", "residual"),
             ("ln_2: LayerNorm", f"{first.ln_2.normalized_shape[0]}"),
             ("mlp", f"c_fc {linear(first.mlp.c_fc)}, GELU ({cfg.gelu}), c_proj {linear(first.mlp.c_proj)}"),
             ("+", "residual")]
    tied = model.lm_head.weight is t.wte.weight
    head = [("ln_f: LayerNorm", f"{t.ln_f.normalized_shape[0]}"),
            ("lm_head", f"{linear(model.lm_head)}" + (" (tied to wte)" if tied else "")),
            ("logits", f"(B, T, {model.lm_head.out_features}) \u2192 softmax \u2192 next token")]
    return stem, block, head, len(t.h)


def draw(model, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    stem, block, head, layers = describe(model)
    rows = stem + block + head
    height = sum(0.7 if name == '+' else 0.9 for name, _ in rows) + 0.9
    fig, ax = plt.subplots(figsize=(7.5, height))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, height)
    ax.axis('off')
    colours = {'stem': '#dbe9f6', 'attn': '#fde2c8', 'mlp': '#d8f0d2', 'norm': '#eeeeee', 'head': '#e8dcf5'}
    y = height - 0.8
    centres = []
    block_top = block_bottom = None
    for i, (name, detail) in enumerate(rows):
        in_block = len(stem) <= i < len(stem) + len(block)
        if name == '+':  # the residual add: a small circle on the spine
            ax.add_patch(plt.Circle((5, y), 0.18, facecolor='white', edgecolor='black', zorder=3))
            ax.text(5, y, '+', ha='center', va='center', fontsize=12, zorder=4)
            centres.append((y, 0.18))
        else:
            kind = ('norm' if 'LayerNorm' in name else 'attn' if name.startswith('attn')
                    else 'mlp' if name == 'mlp' else 'head' if i >= len(stem) + len(block) else 'stem')
            box_h = 0.62 if '\n' not in detail else 0.8
            ax.add_patch(FancyBboxPatch((1.5, y - box_h / 2), 7, box_h, boxstyle='round,pad=0.04',
                                        facecolor=colours[kind], edgecolor='#555555', zorder=2))
            ax.text(5, y + 0.12, name, ha='center', va='center', fontsize=9.5, weight='bold', zorder=3)
            ax.text(5, y - 0.16, detail, ha='center', va='center', fontsize=7.5, zorder=3)
            centres.append((y, box_h / 2))
        if in_block and block_top is None:
            block_top = y + 0.55
        if in_block:
            block_bottom = y - (0.3 if name == '+' else 0.45)
        y -= 0.9 if name != '+' else 0.7
    for (y0, h0), (y1, h1) in zip(centres, centres[1:]):  # the spine, top to bottom
        ax.annotate('', xy=(5, y1 + h1), xytext=(5, y0 - h0),
                    arrowprops=dict(arrowstyle='->', color='#333333', lw=1), zorder=1)
    # residual branches: from above each LayerNorm around to its '+'
    plus = [c for c, (name, _) in zip(centres, rows) if name == '+']
    norms = [c for c, (name, _) in zip(centres, rows) if name.startswith(('ln_1', 'ln_2'))]
    for (ny, nh), (py, _) in zip(norms, plus):
        top = ny + nh + 0.12
        ax.plot([5, 9.1, 9.1, 5.18], [top, top, py, py], color='#1f77b4', lw=1, zorder=1)
    ax.add_patch(FancyBboxPatch((1.1, block_bottom), 8.4, block_top - block_bottom,
                                boxstyle='round,pad=0.05', facecolor='none', edgecolor='#888888',
                                linestyle='--', zorder=0))
    ax.text(0.95, (block_top + block_bottom) / 2, f"Block \u00d7 {layers}", rotation=90,
            ha='right', va='center', fontsize=10)
    cfg = model.config
    ax.set_title(f"GPT ({n_params(model)}): n_layer={cfg.n_layer}, n_head={cfg.n_head}, "
                 f"n_embd={cfg.n_embd}, pos_emb={cfg.pos_emb}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def n_params(model):
    n = model.get_num_params(non_embedding=False)  # the tied lm_head counted once
    return f"{n / 1e6:.1f}M parameters" if n >= 1e6 else f"{n / 1e3:.0f}k parameters"


if __name__ == '__main__':
    gpt = build()
    draw(gpt, output)
    print(f"wrote {output}")
