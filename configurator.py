"""
Configuration for the top-level scripts: defaults block -> config files -> --key=value.

Each script (train.py, sample.py, bench.py, export.py) opens with a block of plain assignments,
its defaults. Right after it the script calls `config = configure(globals())`, which
  1. execs each bare argument as a Python config file, in order (`config/train_don_char.py`,
     or just `train_don_char` / `eval_gpt2`, looked up in config/);
  2. applies `--key=value` overrides: the value is read with ast.literal_eval, else taken as a
     raw string, and checked against the type of the default (an int is fine for a float,
     true/false in any case are booleans, the value may itself contain '=');
  3. returns the final {key: value} dict (what checkpoints record as `config`); with
     return_given=True also the set of keys a config file or --key=value set (even to the
     default's value: train.py's block_size=1024 in config/train_gpt2.py counts as given).
Keys that aren't in the defaults block stop the run before any work, with the closest known
names. `-h` / `--help` prints the defaults block with its comments. NANOGPT_DRY_RUN=1 in the
environment checks a command line (config files, keys, types) and prints the settings it would
run with, then exits without running anything.

    python train.py config/train_don_char.py config/cpu_small.py --max_iters=100 --compile=False
"""

import ast
import difflib
import os
import re
import sys
import types

from smallgpt.errors import UserError, fail, is_main_process

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
USAGE = 2  # the exit code of a command line that can't run (as argparse's); nothing was done


def say(message):
    if is_main_process():
        print(message)


def make_folder(path, key):
    """Create the folder that the setting `key` names (e.g. out_dir), or raise UserError with
    one line saying why it can't be and what to pass instead."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--{key}={path} is a file, not a folder; pass another --{key} "
                         f"(or move the file away)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a parent that is a file, no permission, read-only disk, ...
        raise UserError(f"can't create the folder --{key}={path} ({e.strerror}); "
                         f"pass another --{key}") from None


def config_keys(namespace):
    """The overridable settings: public names bound to plain values in the defaults block."""
    return [k for k, v in namespace.items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))]


def coerce(key, value, default):
    """Check `value` against the type of `default`; return it converted, or raise ValueError."""
    kind = type(default)
    if default is None:
        return value  # no default type to check against
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"expected {kind.__name__}, got {value!r}")


def parse_value(raw, default):
    if isinstance(default, str):
        # strings stay as typed, unless they were quoted for the shell twice ("'abc'")
        try:
            value = ast.literal_eval(raw)
            return value if isinstance(value, str) else raw
        except (ValueError, SyntaxError):
            return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # e.g. cpu, true: coerce() decides whether a string is acceptable


# names other repos and courses use for a setting here (docs/coming-from.md): suggested first
OTHER_NAMES = {"grad_accum": "gradient_accumulation_steps", "accumulation_steps": "gradient_accumulation_steps",
               "data_dir": "dataset", "lr": "learning_rate", "max_steps": "max_iters",
               "num_steps": "max_iters", "warmup_steps": "warmup_iters", "n_embed": "n_embd",
               "context_length": "block_size", "seq_len": "block_size", "num_layers": "n_layer",
               "num_heads": "n_head", "max_tokens": "max_new_tokens", "ckpt_name": "checkpoint_name"}


def unknown_keys_message(unknown, keys, where):
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, keys, n=3, cutoff=0.6)
        if OTHER_NAMES.get(k) in keys:
            close = [OTHER_NAMES[k]] + [c for c in close if c != OTHER_NAMES[k]][:1]
        parts.append(f"{k} (did you mean {' or '.join(close)}?)" if close else k)
    return f"{where}: unknown config key(s): {', '.join(parts)}. Run with --help to list every key."


def find_config_file(arg, config_path=None):
    """A config file by path, or by name in config/; with Hydra's --config-path=DIR, a
    --config-name is looked for in DIR only (from here, or from the repo when relative)."""
    if config_path is None:
        candidates = [arg, os.path.join(CONFIG_DIR, arg), os.path.join(CONFIG_DIR, arg + ".py")]
    else:
        folders = [config_path] + ([] if os.path.isabs(config_path) else
                                   [os.path.join(os.path.dirname(CONFIG_DIR), config_path)])
        candidates = [os.path.join(d, n) for d in folders for n in (arg, arg + ".py")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    fail(f"config file {arg!r} not found (looked for {', '.join(candidates)}); "
         f"ls {os.path.relpath(CONFIG_DIR)} lists the ones that ship", USAGE)


def print_help(script, keys, namespace):
    """The defaults block of `script`: key, default and the comment beside it."""
    comments = {}
    if script and os.path.isfile(script):
        for line in open(script, encoding="utf-8"):
            m = re.match(r"^(\w+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$", line.rstrip("\n"))
            if m and m.group(1) in keys and m.group(1) not in comments:
                comments[m.group(1)] = m.group(3) or ""
    name = os.path.basename(script or "script.py")
    try:
        print(f"usage: python {name} [config_file ...] [--key=value ...]\n")
        print("Config files (config/*.py) are plain assignments, applied in order; --key=value after.")
        print("Settings and their defaults:")
        width = max(len(k) for k in keys)
        for k in keys:
            default = repr(namespace[k])
            comment = comments.get(k, "")
            print(f"  --{k:<{width}} = {default:<14}" + (f"  # {comment}" if comment else ""))
        sys.stdout.flush()
    except BrokenPipeError:  # `--help | head` stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second one at exit
    sys.exit(0)


def assigned_names(tree):
    """The names a config file's top level assigns (`x = ...`, `x += ...`, in if/for blocks too),
    not those inside its functions or classes: the keys the file sets, whatever the value (an
    assignment of the default's value is a choice the file made)."""
    names, todo = set(), [tree]
    while todo:
        for child in ast.iter_child_nodes(todo.pop()):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue  # their own scope
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                names.add(child.id)
            todo.append(child)
    return names


def configure(namespace, argv=None, script=None, ignore=(), echo=True, return_given=False):
    """Apply config files and --key=value overrides from argv to `namespace` (a script's
    globals()); return the final settings as a dict, and with return_given=True also the set of
    keys that a config file or --key=value set (given, even when to the default's value). Keys
    in `ignore` may appear in config files (e.g. train.py's keys, read by bench.py) and are
    skipped. echo=False keeps quiet about what was overridden (sample.py: its stdout is the
    generated text)."""
    argv = sys.argv[1:] if argv is None else argv
    script = script or namespace.get("__file__")
    keys = config_keys(namespace)
    if any(a in ("-h", "--help") for a in argv):
        print_help(script, keys, namespace)
    cli_keys = [a[2:].partition("=")[0] for a in argv
                if a.startswith("--") and not a.startswith(("--config-path=", "--config-name="))]
    unknown = [k for k in cli_keys if k not in keys]
    if unknown:  # all of them at once, before any config file runs
        fail(unknown_keys_message(unknown, keys, "command line"), USAGE)

    given = set()
    # Hydra-style launch lines: --config-path=DIR --config-name=NAME reads DIR/NAME(.py)
    config_path = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("--config-path=")), None)
    for arg in argv:
        if arg.startswith("--config-path="):
            continue
        if not arg.startswith("--") or arg.startswith("--config-name="):
            path = (find_config_file(arg.split("=", 1)[1], config_path) if arg.startswith("--")
                    else find_config_file(arg))
            if echo:
                say(f"Overriding config with {path}")
            scope = {k: namespace[k] for k in keys}
            scope.update({k: '' for k in ignore if k not in scope})  # readable, unused
            try:
                tree = ast.parse(open(path, encoding="utf-8").read(), path)
                exec(compile(tree, path, "exec"), scope)
            except Exception as e:  # a config file is user code: report where it broke
                fail(f"{path}: {type(e).__name__}: {e}", USAGE)
            changed = {k: v for k, v in scope.items()
                       if not k.startswith("_") and k != "__builtins__"
                       and not isinstance(v, types.ModuleType) and not callable(v)  # imports, helpers
                       and (k not in namespace or v is not namespace[k])}
            changed = {k: v for k, v in changed.items() if k not in ignore}
            unknown = [k for k in changed if k not in keys]
            if unknown:
                fail(unknown_keys_message(unknown, keys, path), USAGE)
            for k, v in changed.items():
                try:
                    namespace[k] = coerce(k, v, namespace[k])
                except ValueError as e:
                    fail(f"{path}: {k}: {e}", USAGE)
            given |= set(changed) | {k for k in assigned_names(tree) if k in keys and k not in ignore}
        else:
            key, sep, raw = arg[2:].partition("=")
            if not sep:
                fail(f"{arg} needs a value: --{key}=VALUE", USAGE)
            try:
                namespace[key] = coerce(key, parse_value(raw, namespace[key]), namespace[key])
            except ValueError as e:
                fail(f"--{key}: {e}", USAGE)
            given.add(key)
            if echo:
                say(f"Overriding: {key} = {namespace[key]!r}")
    final = {k: namespace[k] for k in keys}
    if os.environ.get("NANOGPT_DRY_RUN"):  # check a command line without running it
        say("dry run: the settings are valid; this command would run with:")
        for k, v in final.items():
            say(f"  {k} = {v!r}")
        sys.exit(0)
    return (final, given) if return_given else final
