"""
Move weights between our GPT (model.py) and Hugging Face's GPT2LMHeadModel. convert.py picks
this file or starcoder2.py; common.py holds what both share (config checks, folder writing,
tokenizer files). Used by GPT.from_pretrained (HF -> ours) and by export.py (ours -> HF):

    model = GPT.from_pretrained("gpt2")               # or "gpt2-xl", "openai-community/gpt2"
    model = GPT.from_pretrained("/path/to/hf_dir")    # offline: config.json + model.safetensors
    save_hf(model, "hf-don")    # then: AutoModelForCausalLM.from_pretrained("hf-don")

GPT-2 is the architecture of our default model (learned positions, full multi-head attention).
Rotary models (pos_emb='rope', with n_kv_head and attn_window) go to and come from Starcoder2
instead: starcoder2.py. convert.py's save_hf and load_hf pick the architecture.

GPT-2 and our default GPT are the same network with nearly the same parameter names. The
differences:
  - HF keeps c_attn, c_proj and c_fc in a `Conv1D` that stores the weight as (in, out), the
    transpose of nn.Linear's (out, in), so those four matrices are transposed both ways.
  - GELU: HF 'gelu_new' / 'gelu_pytorch_tanh' is our gelu='tanh'; HF 'gelu' is gelu='exact'.
  - Our bias=False models export with zero biases, which computes exactly the same function.
  - HF GPT-2 has settings our model cannot represent (see _check_hf_config); we refuse those
    rather than load weights into a network that computes something else.

Vocabulary: a model trained on GPT-2 BPE with the vocabulary padded to 50304 exports as is
(HF config vocab_size=50304). The tokenizer never produces ids 50257..50303: those embedding
rows are never an input, and training only ever pushes their logits down, so they are dead weight.
Tokenizer files (vocab.json, merges.txt, tokenizer.json) are written when GPT-2 BPE files can
be found: from `tokenizer_dir` (encoder.json + vocab.bpe, or vocab.json + merges.txt) or from
the local Hugging Face cache of 'gpt2'. A model of a char, bytes or own-BPE dataset gets its
own tokenizer.json instead (`tokenizer`, common.write_own_tokenizer). Nothing here touches the network except loading a model
by its hub name.

transformers is imported inside the functions, so model.py works without it.
"""

import torch

from smallgpt.hf.common import (EXPORTABLE_FIELDS, HF_TO_OUR_GELU, LAYER_NORM_EPS, OUR_TO_HF_GELU,
                                _transformers, common_problems, gpt2_eot, refuse_problems,
                                unexportable_fields, write_hf_folder)


# HF's Conv1D weights, stored (in, out): transposed relative to our nn.Linear (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight",
                  "mlp.c_fc.weight", "mlp.c_proj.weight")


# ----------------------------------------------------------------------------------------------
# Hugging Face -> ours


def _check_hf_config(config):
    """Raise ValueError naming the first HF GPT-2 setting our GPT cannot compute."""
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    name = get("_name_or_path") or "this model"
    if get("model_type") != "gpt2":
        raise ValueError(f"{name} is a {get('model_type')!r} model; only Hugging Face GPT-2 "
                         f"(model_type 'gpt2') and Starcoder2 ('starcoder2') load into "
                         f"model.py's GPT")
    problems = common_problems(config, "activation_function", "n_inner", "layer_norm_epsilon")
    if not get("scale_attn_weights", True):
        problems.append("scale_attn_weights=False (we always scale attention by 1/sqrt(head_dim))")
    if get("scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if get("reorder_and_upcast_attn", False):
        problems.append("reorder_and_upcast_attn=True")
    if get("add_cross_attention", False):
        problems.append("add_cross_attention=True")
    refuse_problems(config, problems)


def config_args_from_hf(config):
    """GPTConfig kwargs for a (checked) HF GPT2Config."""
    _check_hf_config(config)
    return dict(
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        block_size=config.n_positions,
        vocab_size=config.vocab_size,
        bias=True,     # GPT-2 has biases everywhere
        # like nanoGPT: pretrained weights come with dropout 0 (override it to fine-tune);
        # HF's resid/embd/attn_pdrop only record how the model was trained
        dropout=0.0,
        gelu=HF_TO_OUR_GELU[config.activation_function],
    )


def state_dict_from_hf(hf_state):
    """Our GPT's state dict from a GPT2LMHeadModel state dict."""
    state = {}
    for key, tensor in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers that older transformers saved with the weights
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[key] = tensor.contiguous()
    # the head is tied to wte; HF files often store only one of the two
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


# ----------------------------------------------------------------------------------------------
# ours -> Hugging Face


def _check_exportable(config):
    """Raise ValueError listing the GPTConfig settings HF GPT-2 cannot hold."""
    problems = unexportable_fields(config, EXPORTABLE_FIELDS)
    if config.gelu not in OUR_TO_HF_GELU:
        problems.append(f"gelu={config.gelu!r}")
    if problems:
        # every attention variant (pos_emb, n_kv_head, attn_window, kv_share...) lands here
        routes = " (GPT-2 has learned positions and full multi-head attention only; rotary " \
                 "models, pos_emb='rope', export to Starcoder2, which also has n_kv_head and one " \
                 "attn_window for every layer)" \
            if any(not p.startswith("gelu=") for p in problems) else ""
        raise ValueError(f"cannot export to Hugging Face GPT-2: it has no equivalent of "
                         f"{', '.join(problems)}{routes}")


def hf_config_from_ours(config):
    """The GPT2Config that computes the same function as our GPTConfig."""
    _check_exportable(config)
    transformers = _transformers()
    eot = gpt2_eot(config.vocab_size)  # bos/eos only when the vocabulary has <|endoftext|>
    return transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,  # HF reads None as 4 * n_embd, like our MLP
        activation_function=OUR_TO_HF_GELU[config.gelu],
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        architectures=["GPT2LMHeadModel"],
    )


def hf_state_dict_from_ours(model, hf_keys_and_shapes):
    """A GPT2LMHeadModel state dict from our model; missing biases (bias=False) become zeros."""
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    extra = sorted(set(ours) - set(hf_keys_and_shapes))
    if extra:
        raise ValueError(f"cannot export to Hugging Face GPT-2: it has no place for {extra}")
    state = {}
    for key, shape in hf_keys_and_shapes.items():
        if key in ours:
            tensor = ours[key].t() if key.endswith(CONV1D_WEIGHTS) else ours[key]
            state[key] = tensor.contiguous()
        else:
            assert key.endswith(".bias") and not model.config.bias, f"no value for {key}"
            state[key] = torch.zeros(shape, dtype=model.lm_head.weight.dtype)
    return state


def save_hf_gpt2(model, hf_dir, tokenizer_dir=None, tokenizer=None):
    """Write `model` to hf_dir as a Hugging Face GPT-2 (config.json, model.safetensors) that
    GPT2LMHeadModel.from_pretrained(hf_dir) loads without warnings, plus tokenizer files when
    they can be found (see the module docstring). Returns the tokenizer files written."""
    hf = _transformers().GPT2LMHeadModel(hf_config_from_ours(model.config))
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items()}
    state = hf_state_dict_from_ours(model, hf_shapes)
    return write_hf_folder(hf, state, hf_dir, model.config.vocab_size, tokenizer_dir, tokenizer)


# ----------------------------------------------------------------------------------------------
# tokenizer files


