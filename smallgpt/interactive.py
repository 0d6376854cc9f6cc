"""
The interactive prompt of sample.py (`--interactive=True`): type a prompt, watch the completion
stream, change settings with /commands, all without reloading the model.

    > Sancho said                      a prompt (end a line with \\ to continue it on the next)
    > /temperature 0.5                 change a setting; /settings shows them all
    > /help                            list the commands
    > /quit                            (or Ctrl+D) leave; Ctrl+C stops a generation in progress
"""

import sys

import torch

HELP = """commands:
  /temperature X   sampling temperature (0 = greedy)      /top_k N   keep the N likeliest (0 = all)
  /top_p X         nucleus sampling mass (1 = off)         /max_new_tokens N
  /seed N          reseed the random generator             /num_samples N
  /settings        show the current settings               /help      this text
  /quit            leave (Ctrl+D works too)
A line ending in \\ continues the prompt on the next line. Ctrl+C stops a generation."""

SETTING_TYPES = {'temperature': float, 'top_k': int, 'top_p': float, 'max_new_tokens': int,
                 'seed': int, 'num_samples': int}
# what each setting accepts (sample.py checks its command line with the same rules)
SETTING_RULES = {'temperature': (lambda v: v >= 0, '>= 0 (0 = greedy)'),
                 'top_k': (lambda v: v >= 0, '>= 0 (0 = all tokens)'),
                 'top_p': (lambda v: 0 < v <= 1, 'in (0, 1] (1 = off)'),
                 'max_new_tokens': (lambda v: v >= 0, '>= 0'),
                 'num_samples': (lambda v: v >= 1, '>= 1'),
                 'seed': (lambda v: True, 'an int')}
ALIASES = {'temp': 'temperature', 'k': 'top_k', 'p': 'top_p', 'max': 'max_new_tokens',
           'n': 'num_samples', 'exit': 'quit', 'q': 'quit', 'h': 'help', '?': 'help'}


def setting_error(name, value):
    """A one-line message when `value` is out of range for setting `name`, else None."""
    ok, rule = SETTING_RULES[name]
    return None if ok(value) else f"{name} must be {rule}, got {value}"


def read_prompt():
    """One prompt from stdin; lines ending in a backslash continue. None at end of input."""
    lines = []
    while True:
        try:
            line = input('> ' if not lines else '. ')
        except EOFError:
            return None
        if line.endswith('\\'):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return '\n'.join(lines)


def apply_command(line, settings):
    """Handle a /command; return False when it asks to quit."""
    name, _, value = line[1:].strip().partition(' ')
    name = ALIASES.get(name, name)
    if name == 'quit':
        return False
    if name == 'help':
        print(HELP)
    elif name == 'settings':
        print('  ' + '  '.join(f"{k}={v}" for k, v in settings.items()))
    elif name in SETTING_TYPES:
        try:
            new_value = SETTING_TYPES[name](value.strip())
        except ValueError:
            print(f"/{name} needs a {SETTING_TYPES[name].__name__}, e.g. /{name} "
                  f"{settings[name]}")
            return True
        if setting_error(name, new_value):
            print(f"{setting_error(name, new_value)}; {name} stays {settings[name]}")
            return True
        settings[name] = new_value
        if name == 'seed':
            torch.manual_seed(settings['seed'])
        print(f"{name} = {settings[name]}")
    else:
        print(f"unknown command /{name}; /help lists them")
    return True


def prompt_loop(generate, settings, encode):
    """Read prompts until /quit or Ctrl+D; `generate(prompts, settings, show_stream)` does the
    work, `encode(text)` validates a prompt (raises ValueError for unknown characters)."""
    print("interactive mode: type a prompt and press Enter; /help for commands, /quit to leave")
    while True:
        try:
            text = read_prompt()
        except KeyboardInterrupt:
            print("\n(Ctrl+C at the prompt: /quit or Ctrl+D leaves)")
            continue
        if text is None:
            print()
            break
        if text.startswith('/'):
            if not apply_command(text, settings):
                break
            continue
        if not text:
            continue
        try:
            encode(text)
        except ValueError as e:
            print(f"error: {e}")
            continue
        try:
            samples = generate([text], settings, show_stream=settings['num_samples'] == 1)
            if settings['num_samples'] > 1:
                for s in samples:
                    print(s.prompt + s.text)
                    print('---------------')
        except KeyboardInterrupt:
            print("\n(generation stopped)")
        sys.stdout.flush()
