"""
Move weights between our rotary GPT (model.py, pos_emb='rope') and Hugging
Face's Starcoder2ForCausalLM. convert.py picks this file for rotary models and Starcoder2
folders, and common.py lends it the checks, folder writing and tokenizer files all exports share:

    save_hf(model, "hf-rope")                  # convert.save_hf; a rotary model lands here
    model = GPT.from_pretrained("hf-rope")     # a local Starcoder2 folder loads as pos_emb='rope'

Why Starcoder2: of the architectures in transformers it is the one our rotary GPT already is.
Pre-LayerNorm blocks with biases, a GELU MLP (c_fc, c_proj) of 4 * n_embd, rotary positions on
q and k of every head in the half-split (rotate_half) layout that apply_rope uses, grouped-query
attention (num_key_value_heads = our n_kv_head), one sliding_window for all layers, dropout on
embeddings, attention weights and residual branches, a head tied to the token embedding.

What differs, and how it maps:
  - Names: wte = model.embed_tokens, ln_1/ln_2 = input_/post_attention_layernorm,
    attn.c_proj = self_attn.o_proj, ln_f = model.norm; c_fc and c_proj keep their names. Both
    use nn.Linear, so no weight is transposed (unlike GPT-2's Conv1D).
  - Our fused c_attn is Starcoder2's q_proj, k_proj and v_proj stacked by rows:
    n_embd rows of q, then n_kv_head * head_dim of k, then as many of v.
  - Window: both let query i see key j when i - window < j <= i (HF's sliding-window overlay
    is kv_idx > q_idx - sliding_window, on top of the causal mask), so sliding_window equals
    our attn_window: a query sees `window` keys, itself included. Tested with a window shorter
    than the sequence, where W + 1 or W - 1 would change the logits.
  - GELU: our 'tanh' is hidden_act 'gelu_pytorch_tanh' (the same torch kernel), 'exact' is 'gelu'.
  - bias=False: Starcoder2's use_bias=False drops the Linear biases, but its LayerNorms always
    have one; we export zeros there. A use_bias=False folder loads back as bias=False only
    when those LayerNorm biases are all zero (ours are); other ones are refused, naming them.
  - RoPE: rope_parameters {'rope_type': 'default', 'rope_theta': our rope_theta} (transformers 5
    keeps theta there). max_position_embeddings is our block_size; neither has a position table.

Refused (one line naming the setting): a window_pattern that mixes windowed and full layers,
kv_share > 1, and, on import, any Starcoder2 setting our GPTConfig cannot express (see
check_starcoder2_config). Learned or no positions never come here: gpt2.py handles them.
"""

import torch

from smallgpt.hf.common import (EXPORTABLE_FIELDS, HF_TO_OUR_GELU, LAYER_NORM_EPS, _transformers,
                                common_problems, gpt2_eot, refuse_problems, unexportable_fields,
                                write_hf_folder)

# GPTConfig fields a Starcoder2 holds, some only at some values (see _check_exportable)
STARCODER2_FIELDS = EXPORTABLE_FIELDS | {"pos_emb", "rope_theta", "n_kv_head", "attn_window",
                                         "window_pattern", "kv_share"}
# our gelu -> hidden_act; 'gelu_pytorch_tanh' is torch's tanh GELU, the kernel our MLP runs
OUR_TO_STARCODER2_GELU = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}

# our name inside a Block -> Starcoder2's inside a decoder layer (c_attn is split, see above)
BLOCK_NAMES = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
               "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.c_fc",
               "mlp.c_proj": "mlp.c_proj"}


def tensor_names(n_layer):
    """(our name, Starcoder2's name) of every tensor except c_attn and the tied lm_head."""
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight"),
             ("transformer.ln_f.weight", "model.norm.weight"),
             ("transformer.ln_f.bias", "model.norm.bias")]
    for i in range(n_layer):
        for ours, theirs in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                pairs.append((f"transformer.h.{i}.{ours}.{kind}",
                              f"model.layers.{i}.{theirs}.{kind}"))
    return pairs


def qkv_names(layer):
    return [f"model.layers.{layer}.self_attn.{proj}_proj" for proj in "qkv"]


# ----------------------------------------------------------------------------------------------
# Hugging Face -> ours


def check_starcoder2_config(config):
    """Raise ValueError naming every Starcoder2 setting our GPT cannot compute."""
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    problems = common_problems(config, "hidden_act", "intermediate_size", "norm_epsilon")
    rope = get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope['rope_type']!r} (ours is plain RoPE, 'default')")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']} (ours turns "
                        f"every dimension of a head)")
    head_dim = config.hidden_size // config.num_attention_heads
    if get("head_dim") not in (None, head_dim):
        problems.append(f"head_dim={get('head_dim')} (ours is hidden_size / num_attention_heads "
                        f"= {head_dim})")
    refuse_problems(config, problems)


def config_args_from_starcoder2(config):
    """GPTConfig kwargs for a Starcoder2Config, checked first."""
    check_starcoder2_config(config)
    n_kv_head = config.num_key_value_heads
    return dict(
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_embd=config.hidden_size,
        block_size=config.max_position_embeddings,
        vocab_size=config.vocab_size,
        bias=config.use_bias,  # use_bias=False: see state_dict_from_starcoder2
        dropout=0.0,  # as for GPT-2: HF's dropouts record training, override to fine-tune
        gelu=HF_TO_OUR_GELU[config.hidden_act],
        pos_emb="rope",
        rope_theta=float(config.rope_parameters["rope_theta"]),
        # 0 is GPTConfig's "as many as n_head", so a plain model keeps nanoGPT's model_args
        n_kv_head=0 if n_kv_head == config.num_attention_heads else n_kv_head,
        attn_window=config.sliding_window or 0,  # the same count of keys: see the docstring
    )


def state_dict_from_starcoder2(hf_state, config):
    """Our GPT's state dict from a (loaded) Starcoder2ForCausalLM's state dict. With
    use_bias=False the LayerNorm biases, which Starcoder2 keeps, must be zero: our bias=False
    model has no LayerNorm bias to hold them."""
    state = {}
    for ours, theirs in tensor_names(config.num_hidden_layers):
        if theirs not in hf_state:
            continue  # a Linear bias of a use_bias=False model
        if not config.use_bias and theirs.endswith(".bias"):  # a LayerNorm's
            if hf_state[theirs].any():
                name = getattr(config, "_name_or_path", None) or "this model"
                raise ValueError(f"{name} has use_bias=False and a non-zero LayerNorm bias "
                                 f"({theirs}), which model.py's GPT with bias=False cannot "
                                 f"represent")
            continue
        state[ours] = hf_state[theirs]
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied
    for i in range(config.num_hidden_layers):
        for kind in ("weight", "bias") if config.use_bias else ("weight",):
            state[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(
                [hf_state[f"{name}.{kind}"] for name in qkv_names(i)])  # rows: q, k, v
    return state


# ----------------------------------------------------------------------------------------------
# ours -> Hugging Face


def _check_exportable(config):
    """Raise ValueError naming the GPTConfig settings a Starcoder2 cannot hold."""
    problems = []
    if config.pos_emb != "rope":
        problems.append(f"pos_emb={config.pos_emb!r} (Starcoder2's positions are rotary)")
    if len({config.layer_window(i) for i in range(config.n_layer)}) > 1:
        problems.append(f"window_pattern={config.window_pattern!r} (windowed and full layers "
                        f"mixed; Starcoder2 has one sliding_window for every layer)")
    if config.kv_share > 1:
        problems.append(f"kv_share={config.kv_share} (layers sharing keys/values; every "
                        f"Starcoder2 layer projects its own)")
    problems += unexportable_fields(config, STARCODER2_FIELDS)  # fields model.py adds later
    if problems:
        raise ValueError(f"cannot export to Hugging Face Starcoder2: it has no equivalent of "
                         f"{', '.join(problems)}")


def starcoder2_config_from_ours(config):
    """The Starcoder2Config that computes the same function as our GPTConfig."""
    _check_exportable(config)
    eot = gpt2_eot(config.vocab_size)  # bos/eos only when the vocabulary has <|endoftext|>
    window = config.layer_window(0)  # the same on every layer, checked above
    return _transformers().Starcoder2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=4 * config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.kv_heads,
        hidden_act=OUR_TO_STARCODER2_GELU[config.gelu],
        max_position_embeddings=config.block_size,
        norm_epsilon=LAYER_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        sliding_window=window or None,  # None = full causal attention
        attention_dropout=config.dropout,
        residual_dropout=config.dropout,
        embedding_dropout=config.dropout,
        use_bias=config.bias,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=None,
        architectures=["Starcoder2ForCausalLM"],
    )


def starcoder2_state_dict_from_ours(model, hf_keys_and_shapes):
    """A Starcoder2ForCausalLM state dict from our model. With bias=False the LayerNorm biases,
    which Starcoder2 always has, become zeros: the same function."""
    cfg = model.config
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    state = {"lm_head.weight": ours.pop("lm_head.weight")}  # the same tensor as wte
    for our_name, theirs in tensor_names(cfg.n_layer):
        if our_name in ours:
            state[theirs] = ours.pop(our_name)
        elif theirs in hf_keys_and_shapes:  # a LayerNorm bias of a bias=False model
            state[theirs] = torch.zeros(hf_keys_and_shapes[theirs], dtype=model.lm_head.weight.dtype)
    kv_dim = cfg.kv_heads * (cfg.n_embd // cfg.n_head)
    for i in range(cfg.n_layer):
        for kind in ("weight", "bias"):
            fused = ours.pop(f"transformer.h.{i}.attn.c_attn.{kind}", None)  # (C + 2 * kv_dim, ...)
            if fused is not None:
                for name, part in zip(qkv_names(i), fused.split([cfg.n_embd, kv_dim, kv_dim])):
                    state[f"{name}.{kind}"] = part.contiguous()
    if ours:
        raise ValueError(f"cannot export to Hugging Face Starcoder2: it has no place for "
                         f"{sorted(ours)}")
    return state


def save_hf_starcoder2(model, hf_dir, tokenizer_dir=None, tokenizer=None):
    """Write `model` to hf_dir as a Hugging Face Starcoder2 (config.json, model.safetensors) that
    AutoModelForCausalLM.from_pretrained(hf_dir) loads without warnings, plus the GPT-2 BPE
    tokenizer files when they can be found. Returns the tokenizer files written."""
    hf = _transformers().Starcoder2ForCausalLM(starcoder2_config_from_ours(model.config))
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items()}
    state = starcoder2_state_dict_from_ours(model, hf_shapes)
    return write_hf_folder(hf, state, hf_dir, model.config.vocab_size, tokenizer_dir, tokenizer)
