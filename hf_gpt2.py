"""
hf_gpt2.py: move weights between our GPT (model.py) and Hugging Face's GPT2LMHeadModel, and the
pieces every Hugging Face conversion shares (config checks, folder writing, tokenizer files).

A library, used by GPT.from_pretrained (HF -> ours) and by export.py (ours -> HF):

    model = GPT.from_pretrained("gpt2")               # or "gpt2-xl", "openai-community/gpt2"
    model = GPT.from_pretrained("/path/to/hf_dir")    # offline: config.json + model.safetensors
    save_hf(model, "hf-don")    # then: AutoModelForCausalLM.from_pretrained("hf-don")

GPT-2 is the architecture of our default model (learned positions, full multi-head attention).
Rotary models (pos_emb='rope', with n_kv_head and attn_window) go to and come from Starcoder2
instead: hf_starcoder2.py. save_hf and load_hf_gpt2 pick the architecture; the rest of this
file is GPT-2's.

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
the local Hugging Face cache of 'gpt2'. Nothing here touches the network except loading a model
by its hub name.

transformers is imported inside the functions, so model.py works without it.
"""

import json
import os
import shutil
from dataclasses import fields

import torch

from model import GPT
from textdata import hub_reachable

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_BPE_VOCAB_SIZES = (50257, 50304)   # GPT-2's BPE, and nanoGPT's padding of it to 64 * 786
GPT2_EOT = 50256                        # <|endoftext|>, GPT-2's only special token
LAYER_NORM_EPS = 1e-5                   # nn.LayerNorm's default, which model.py uses

# HF activation_function (GPT-2) or hidden_act (Starcoder2) -> our GPTConfig.gelu
HF_TO_OUR_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
OUR_TO_HF_GELU = {"tanh": "gelu_new", "exact": "gelu"}

# HF's Conv1D weights, stored (in, out): transposed relative to our nn.Linear (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight",
                  "mlp.c_fc.weight", "mlp.c_proj.weight")

# GPTConfig fields that HF GPT-2 can hold; any other exports only at its default value
EXPORTABLE_FIELDS = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias",
                     "gelu"}

LOCAL_DIR_HINT = ("pass a local Hugging Face GPT-2 directory instead: --init_from=/path/to/dir "
                  "(holding config.json and model.safetensors or pytorch_model.bin)")


def _transformers():
    try:
        import transformers
    except ImportError:
        # RuntimeError, not ImportError: train.py and sample.py report RuntimeError in one line
        raise RuntimeError("Hugging Face weights need transformers; "
                           "run: pip install transformers") from None
    return transformers


# ----------------------------------------------------------------------------------------------
# Hugging Face -> ours


def _looks_like_path(name):
    # hub ids are 'name' or 'org/name'; anything else the user typed is a path
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def common_problems(config, activation_key, inner_key, epsilon_key):
    """What GPT-2 and Starcoder2 share under different field names and our GPT fixes: the GELU
    flavour, the MLP width (4 * n_embd; None = that), the LayerNorm epsilon, the tied head.
    Returns a list of problems, each naming the field."""
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    width = 4 * config.hidden_size
    problems = []
    if get(activation_key) not in HF_TO_OUR_GELU:
        problems.append(f"{activation_key}={get(activation_key)!r} "
                        f"(supported: {', '.join(HF_TO_OUR_GELU)})")
    if get(inner_key) not in (None, width):
        problems.append(f"{inner_key}={get(inner_key)} (our MLP is 4 * n_embd = {width})")
    if get(epsilon_key) != LAYER_NORM_EPS:
        problems.append(f"{epsilon_key}={get(epsilon_key)} (ours is {LAYER_NORM_EPS})")
    if not get("tie_word_embeddings", True):
        problems.append("tie_word_embeddings=False (our lm_head is tied to wte)")
    return problems


def refuse_problems(config, problems):
    """One ValueError line naming every setting our GPT cannot compute, if there are any."""
    if problems:
        name = getattr(config, "_name_or_path", None) or "this model"
        raise ValueError(f"{name} has settings model.py's GPT cannot represent: "
                         + "; ".join(problems))


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


def load_hf_gpt2(name_or_dir):
    """
    (GPTConfig kwargs, state dict) for a GPT-2 on the Hugging Face Hub ('gpt2', 'gpt2-medium',
    'gpt2-large', 'gpt2-xl', 'openai-community/gpt2', ...) or in a local directory saved with
    save_pretrained; a directory may also hold a Starcoder2 (see hf_starcoder2.py). A local
    directory never touches the network.
    """
    transformers = _transformers()
    local = os.path.isdir(os.path.expanduser(name_or_dir))
    if local:
        name_or_dir = os.path.expanduser(name_or_dir)
        if not os.path.isfile(os.path.join(name_or_dir, "config.json")):
            raise ValueError(f"{name_or_dir} has no config.json; it must be a Hugging Face GPT-2 "
                             f"or Starcoder2 directory (save_pretrained writes one)")
    elif _looks_like_path(name_or_dir):
        raise FileNotFoundError(f"no such directory: {name_or_dir}; give a local Hugging Face "
                                f"GPT-2 directory or one of {', '.join(GPT2_NAMES)}")
    # A hub name is read from the local cache when it is there; the hub is asked only when it
    # answers, so an offline machine gets one line at once, not the hub client's retries.
    try:
        return _load_hf(transformers, name_or_dir, local_only=True)
    except OSError as e:
        if local:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"could not load the weights in {name_or_dir} ({reason}); it needs "
                             f"model.safetensors or pytorch_model.bin") from None
        if not hub_reachable():
            raise RuntimeError(f"{name_or_dir!r} is not in the local Hugging Face cache and the hub "
                               f"can't be reached (offline?); {LOCAL_DIR_HINT}") from None
        try:
            return _load_hf(transformers, name_or_dir, local_only=False)
        except OSError:
            raise RuntimeError(f"could not fetch the weights of {name_or_dir!r} from the Hugging "
                               f"Face Hub (no such model, or the download failed); "
                               f"{LOCAL_DIR_HINT}") from None


def _load_hf(transformers, name_or_dir, local_only):
    """(GPTConfig kwargs, state dict) of a GPT-2 or a Starcoder2. The config is checked first,
    so an unsupported model is refused before gigabytes are read."""
    config = transformers.AutoConfig.from_pretrained(name_or_dir, local_files_only=local_only)
    if getattr(config, "model_type", None) == "starcoder2":
        # imported here: hf_starcoder2 builds on this module
        from hf_starcoder2 import config_args_from_starcoder2, state_dict_from_starcoder2
        config_args = config_args_from_starcoder2(config)
        hf = transformers.Starcoder2ForCausalLM.from_pretrained(name_or_dir, config=config,
                                                                local_files_only=local_only)
        return config_args, state_dict_from_starcoder2(hf.state_dict(), config)
    config_args = config_args_from_hf(config)
    hf = transformers.GPT2LMHeadModel.from_pretrained(name_or_dir, config=config,
                                                      local_files_only=local_only)
    return config_args, state_dict_from_hf(hf.state_dict())


# ----------------------------------------------------------------------------------------------
# ours -> Hugging Face


def unexportable_fields(config, exportable):
    """'name=value' of every GPTConfig field outside `exportable` that is not at its default.
    A field added to model.py later thus exports only at its default value, because model.py's
    convention (see GPTConfig.to_model_args) is that a field at its default changes nothing."""
    return [f"{f.name}={getattr(config, f.name)!r}" for f in fields(config)
            if f.name not in exportable and getattr(config, f.name) != f.default]


def gpt2_eot(vocab_size):
    """bos/eos id for an exported config: GPT-2's <|endoftext|> when the vocabulary has it."""
    return GPT2_EOT if vocab_size > GPT2_EOT else None


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


def save_hf(model: GPT, hf_dir, tokenizer_dir=None):
    """
    export.py's entry point: write `model` to hf_dir as the Hugging Face architecture that
    computes the same function, a Starcoder2 for a rotary model (hf_starcoder2.py) and a GPT-2
    otherwise, so AutoModelForCausalLM.from_pretrained(hf_dir) loads it without warnings. A
    setting neither can hold is a ValueError naming it, and nothing is written.
    Returns the tokenizer files written.
    """
    if model.config.pos_emb == "rope":
        from hf_starcoder2 import save_hf_starcoder2  # imported here: it builds on this module
        return save_hf_starcoder2(model, hf_dir, tokenizer_dir)
    return save_hf_gpt2(model, hf_dir, tokenizer_dir)


def save_hf_gpt2(model: GPT, hf_dir, tokenizer_dir=None):
    """Write `model` to hf_dir as a Hugging Face GPT-2 (config.json, model.safetensors) that
    GPT2LMHeadModel.from_pretrained(hf_dir) loads without warnings, plus tokenizer files when
    they can be found (see the module docstring). Returns the tokenizer files written."""
    hf = _transformers().GPT2LMHeadModel(hf_config_from_ours(model.config))
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items()}
    state = hf_state_dict_from_ours(model, hf_shapes)
    return write_hf_folder(hf, state, hf_dir, model.config.vocab_size, tokenizer_dir)


def write_hf_folder(hf, state, hf_dir, vocab_size, tokenizer_dir=None):
    """Load `state` into the freshly built HF model `hf` and save it to hf_dir, with the GPT-2
    BPE tokenizer files when they can be found. Returns the tokenizer files written."""
    # before writing anything, so a wrong tokenizer_dir leaves no half-written folder
    bpe = find_gpt2_bpe(vocab_size, tokenizer_dir)
    # strict: every HF tensor gets our value, so nothing is left at its random init
    hf.load_state_dict(state, strict=True)
    os.makedirs(hf_dir, exist_ok=True)
    hf.save_pretrained(hf_dir)
    assert os.path.isfile(os.path.join(hf_dir, "model.safetensors")), \
        f"transformers {_transformers().__version__} did not write {hf_dir}/model.safetensors"
    return write_gpt2_tokenizer(hf_dir, *bpe) if bpe else []


# ----------------------------------------------------------------------------------------------
# tokenizer files


def _bpe_files_in(tokenizer_dir):
    """(vocab.json path, merges.txt path) in a dir holding either HF's or OpenAI's file names."""
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        paths = [os.path.join(tokenizer_dir, vocab), os.path.join(tokenizer_dir, merges)]
        if all(os.path.isfile(p) for p in paths):
            return paths
    raise ValueError(f"tokenizer_dir {tokenizer_dir} needs encoder.json + vocab.bpe (OpenAI's "
                     f"GPT-2 files) or vocab.json + merges.txt (Hugging Face's)")


def _cached_gpt2_bpe():
    """vocab.json and merges.txt of 'gpt2' from the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo_id in ("gpt2", "openai-community/gpt2"):
        paths = [try_to_load_from_cache(repo_id, f) for f in ("vocab.json", "merges.txt")]
        if all(isinstance(p, str) and os.path.isfile(p) for p in paths):
            return paths
    return None


def find_gpt2_bpe(vocab_size, tokenizer_dir=None):
    """(vocab.json, merges.txt) paths of the model's BPE tokenizer, or None with a note why not."""
    if tokenizer_dir:
        bpe = _bpe_files_in(tokenizer_dir)
    elif vocab_size in GPT2_BPE_VOCAB_SIZES:
        bpe = _cached_gpt2_bpe()
        if bpe is None:
            print("note: tokenizer files not written (GPT-2's BPE files are not in the Hugging "
                  "Face cache); add them with --tokenizer_dir=DIR holding encoder.json + "
                  "vocab.bpe or vocab.json + merges.txt")
            return None
    else:
        print(f"note: no tokenizer written: vocab_size={vocab_size} is not GPT-2's BPE; map ids "
              f"to text with the dataset's meta.json (pass --tokenizer_dir for a BPE tokenizer)")
        return None
    with open(bpe[0], encoding="utf-8") as f:
        n_tokens = len(json.load(f))
    if n_tokens > vocab_size:
        raise ValueError(f"the tokenizer in {os.path.dirname(bpe[0])} has {n_tokens} tokens "
                         f"but the model only {vocab_size}; pass the tokenizer it was trained with")
    return bpe


def write_gpt2_tokenizer(hf_dir, vocab_path, merges_path):
    """Copy the BPE files into hf_dir under HF's names and add the fast tokenizer's files."""
    shutil.copyfile(vocab_path, os.path.join(hf_dir, "vocab.json"))
    shutil.copyfile(merges_path, os.path.join(hf_dir, "merges.txt"))
    # tokenizer.json + tokenizer_config.json: what AutoTokenizer reads first; <|endoftext|> is
    # the GPT2 tokenizer's default bos/eos/unk token
    tokenizer = _transformers().GPT2TokenizerFast.from_pretrained(hf_dir, local_files_only=True)
    saved = tokenizer.save_pretrained(hf_dir)
    return sorted({"vocab.json", "merges.txt", *(os.path.basename(p) for p in saved)})
