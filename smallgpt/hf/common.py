"""
What every Hugging Face conversion shares (gpt2.py and starcoder2.py build on it): the names and
constants of GPT-2's vocabulary, the config checks, writing a model folder, and finding GPT-2's
BPE files for the tokenizer. transformers is imported inside the functions, so model.py and the
scripts work without it.
"""

import json
import os
import shutil
from dataclasses import fields

from smallgpt.tokenizer import EOT_TEXT, check_vocab_fits

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_BPE_VOCAB_SIZES = (50257, 50304)   # GPT-2's BPE, and nanoGPT's padding of it to 64 * 786
GPT2_EOT = 50256                        # <|endoftext|>, GPT-2's only special token
LAYER_NORM_EPS = 1e-5                   # nn.LayerNorm's default, which model.py uses
# HF activation_function (GPT-2) or hidden_act (Starcoder2) -> our GPTConfig.gelu
HF_TO_OUR_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
OUR_TO_HF_GELU = {"tanh": "gelu_new", "exact": "gelu"}
# GPTConfig fields that HF GPT-2 can hold; any other exports only at its default value
EXPORTABLE_FIELDS = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias",
                     "gelu"}


SUPPORTED_MODEL_TYPES = ("gpt2", "starcoder2")  # what model.py's GPT can be


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


def read_config_json(hf_dir):
    """A local folder's config.json as a dict, read as JSON: data, whatever it says."""
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} can't be read as JSON ({e}); it must be the config.json that "
                         f"save_pretrained writes") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a config (a JSON object)")
    return config


def refuse_foreign_model(name, config):
    """One ValueError line for a config (the dict of a config.json) that model.py's GPT can't
    be: another model_type, or any auto_map, which names Python code shipped with the model for
    transformers to import. We never run it (trust_remote_code=False everywhere): only GPT-2 and
    Starcoder2 load, with transformers' own classes."""
    model_type = config.get("model_type")
    if config.get("auto_map"):
        raise ValueError(f"{name} asks to run its own Python code (auto_map in its config.json, "
                         f"model_type {model_type!r}); code that comes with a model is never run "
                         f"here: only Hugging Face GPT-2 and Starcoder2 load, with transformers' "
                         f"own classes")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{name} is a {model_type!r} model; only Hugging Face GPT-2 "
                         f"(model_type 'gpt2') and Starcoder2 ('starcoder2') load into "
                         f"model.py's GPT")


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


def unexportable_fields(config, exportable):
    """'name=value' of every GPTConfig field outside `exportable` that is not at its default.
    A field added to model.py later thus exports only at its default value, because model.py's
    convention (see GPTConfig.to_model_args) is that a field at its default changes nothing."""
    return [f"{f.name}={getattr(config, f.name)!r}" for f in fields(config)
            if f.name not in exportable and getattr(config, f.name) != f.default]


def gpt2_eot(vocab_size):
    """bos/eos id for an exported config: GPT-2's <|endoftext|> when the vocabulary has it."""
    return GPT2_EOT if vocab_size > GPT2_EOT else None


def write_hf_folder(hf, state, hf_dir, vocab_size, tokenizer_dir=None, tokenizer=None):
    """Load `state` into the freshly built HF model `hf` and save it to hf_dir, with tokenizer
    files: `tokenizer` (the model's own, smallgpt.tokenizer.Tokenizer) when it is a char, bytes
    or BPE-of-its-own vocabulary, else GPT-2's BPE files when they can be found. Returns the
    tokenizer files written."""
    # before writing anything, so a wrong tokenizer_dir leaves no half-written folder
    own = tokenizer.to_hf() if tokenizer is not None and not tokenizer_dir else None
    if own is not None:
        check_vocab_fits(tokenizer, vocab_size)
    bpe = find_gpt2_bpe(vocab_size, tokenizer_dir) if own is None else None
    # strict: every HF tensor gets our value, so nothing is left at its random init
    hf.load_state_dict(state, strict=True)
    os.makedirs(hf_dir, exist_ok=True)
    hf.save_pretrained(hf_dir)
    assert os.path.isfile(os.path.join(hf_dir, "model.safetensors")), \
        f"transformers {_transformers().__version__} did not write {hf_dir}/model.safetensors"
    if own is not None:
        return write_own_tokenizer(hf_dir, own, tokenizer.eot_token is not None)
    return write_gpt2_tokenizer(hf_dir, *bpe) if bpe else []


def write_own_tokenizer(hf_dir, hf_tokenizer, has_eot):
    """tokenizer.json + tokenizer_config.json of a tokenizers.Tokenizer, for AutoTokenizer.
    clean_up_tokenization_spaces=False: transformers would otherwise glue ' .' into '.' when
    decoding, and the text would no longer be what the model wrote."""
    fast = _transformers().PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer, clean_up_tokenization_spaces=False,
        **({"eos_token": EOT_TEXT} if has_eot else {}))
    saved = fast.save_pretrained(hf_dir)
    return sorted({os.path.basename(p) for p in saved if os.path.basename(p).startswith("tok")
                   or os.path.basename(p) == "special_tokens_map.json"})


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
    tokenizer = _transformers().GPT2TokenizerFast.from_pretrained(hf_dir, local_files_only=True,
                                                                  trust_remote_code=False)
    saved = tokenizer.save_pretrained(hf_dir)
    return sorted({"vocab.json", "merges.txt", *(os.path.basename(p) for p in saved)})


# the checkpoint's vocabulary (a data/*/meta.json dict) beside the HF files: sample.py and
# eval.py --init_from=FOLDER then use the model's own tokenizer, not GPT-2's
VOCAB_META = "smallgpt_meta.json"


def write_vocab_meta(hf_dir, meta):
    """meta as hf_dir/VOCAB_META (JSON: loading it runs no code); an empty meta (a GPT-2 BPE
    model) removes an earlier export's, which would describe another vocabulary."""
    path = os.path.join(hf_dir, VOCAB_META)
    if not meta:
        if os.path.exists(path):
            os.remove(path)
        return None
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    return path


def read_vocab_meta(folder):
    """write_vocab_meta's dict, or None where there is none (any other Hugging Face folder:
    GPT-2's tokenizer)."""
    path = os.path.join(folder, VOCAB_META)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); export the checkpoint again with "
                         f"export.py, or delete it to use GPT-2's tokenizer") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), str):
        raise ValueError(f"{path}: not a vocabulary written by export.py (no 'tokenizer' name); "
                         f"export the checkpoint again, or delete it to use GPT-2's tokenizer")
    return meta
