"""One YAML config plus `--key value` overrides for every key.

Parsing is lazy (`get_config()`), so importing this module never reads sys.argv.
"""
import argparse
import ast
import os
import sys
import traceback

import yaml

_HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(_HERE)
DEFAULT_CONFIG = os.path.join(PROJECT_ROOT, "default_config.yaml")

# Alternative spellings accepted on the command line.
ALIASES = {"ckpt": "ckpt_path"}


class ConfigError(ValueError):
    """A config file or a command-line override that cannot be used."""


class Config(dict):
    """A dict whose keys read as attributes: `config.image_size`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(f"config has no key '{name}'") from err

    def __setattr__(self, name, value):
        self[name] = value

    def copy(self):
        return Config(self)


def load_yaml(path):
    """Read a YAML mapping of config keys; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _convert(key, text, default):
    """Turn the command-line string `text` into the type of the key's default value."""
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key} expects true or false, got '{text}'")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(text)
        except ValueError as err:
            raise ConfigError(f"--{key} expects an integer, got '{text}'") from err
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError as err:
            raise ConfigError(f"--{key} expects a number, got '{text}'") from err
    if isinstance(default, (list, tuple)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [item.strip() for item in text.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return list(value)
    return text


def _split_overrides(argv):
    """Pairs (key, text) from `--key value`, `--key=value` and bare boolean `--flag`."""
    pairs = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument '{token}': use --key value")
        body = token[2:]
        if "=" in body:
            key, text = body.split("=", 1)
            index += 1
        elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            key, text = body, argv[index + 1]
            index += 2
        else:
            key, text = body, None
            index += 1
        pairs.append((key.replace("-", "_"), text))
    return pairs


# Flags that may be given several times; their values then form a list (predict.py: several sentences).
REPEATABLE_KEYS = ("sentence",)


def get_config(argv=None, config_path=None, overrides=None):
    """Build the config from YAML, then command-line `--key value`, then `overrides`.

    `argv` defaults to sys.argv[1:]; pass [] in library code and tests.
    """
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config_path", "--config-path", default=None)
    known, rest = parser.parse_known_args(argv)
    path = known.config_path or config_path or DEFAULT_CONFIG
    if "-h" in rest or "--help" in rest:
        _print_help(path)
        sys.exit(0)

    base = load_yaml(DEFAULT_CONFIG) if os.path.abspath(path) != DEFAULT_CONFIG else {}
    values = dict(base)
    chosen = load_yaml(path)
    unknown = sorted(set(chosen) - set(values)) if base else []
    if unknown:
        raise ConfigError(f"unknown config key(s) in {path}: {', '.join(unknown)}")
    values.update(chosen)

    given = set()
    defaults = dict(values)
    for key, text in _split_overrides(rest):
        key = ALIASES.get(key, key)
        if key not in values:
            raise ConfigError(f"unknown config key '--{key}' (see {path})")
        default = defaults[key]
        if text is None:
            if not isinstance(default, bool):
                raise ConfigError(f"--{key} needs a value")
            values[key] = True
        elif key in REPEATABLE_KEYS and key in given:
            previous = values[key] if isinstance(values[key], list) else [values[key]]
            values[key] = previous + [_convert(key, text, default)]
        else:
            values[key] = _convert(key, text, default)
        given.add(key)

    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"unknown config key '{key}'")
        values[key] = value
    check_positive(values)
    config = Config(values)
    config.config_path = os.path.abspath(path)
    return config


# Sizes and counts that have no meaning below 1 (a 0 would fail later, deep inside MindSpore).
POSITIVE_KEYS = ("batch_size", "eval_batch_size", "export_batch_size", "epochs", "image_size", "max_tokens",
                 "num_parallel_workers", "grad_accum_steps", "log_interval", "vocab_size")


def check_positive(values):
    for key in POSITIVE_KEYS:
        if key in values and isinstance(values[key], int) and not isinstance(values[key], bool) and values[key] < 1:
            raise ConfigError(f"--{key} must be at least 1, got {values[key]}")


def _print_help(path):
    """Every key, with its value from `path` over the defaults of default_config.yaml."""
    values = dict(load_yaml(DEFAULT_CONFIG))
    chosen = load_yaml(path) if os.path.abspath(path) != DEFAULT_CONFIG else {}
    values.update(chosen)
    print(f"usage: --config_path PATH, then --<key> <value> for any key below (values of {path}"
          + (f", the rest from {DEFAULT_CONFIG}" if chosen else "") + "):")
    for key, value in values.items():
        print(f"  --{key} (default: {value!r})")


def config_or_exit(argv=None):
    """The config of an entry script's command line; a bad key or value ends the run with a one-line error.

    Entry scripts call this before importing their command, so a bad flag fails before MindSpore loads.
    """
    try:
        return get_config(argv)
    except ConfigError as err:
        sys.exit(f"error: {err}")


def run_or_exit(command, config):
    """Runs `command(config)`; errors about the user's input (ValueError and its kin, a missing file) end
    the run with exit code 1 and a one-line message instead of a traceback.

    In a distributed job any failure ends this rank at once, with a message naming it (see `exit_rank`).
    """
    from src.context import launched_in_parallel
    distributed = launched_in_parallel()
    try:
        return command(config)
    except (ValueError, FileNotFoundError) as err:
        if not distributed:
            sys.exit(f"error: {err}")
        exit_rank(str(err))
    except BaseException as err:  # pylint: disable=broad-except
        if not distributed:
            raise
        traceback.print_exc()
        exit_rank(f"{type(err).__name__}: {err}")
    return None


def exit_rank(message):
    """Ends a rank of a distributed job with `error: rank R: message` and exit code 1.

    It leaves without MindSpore's cluster finalisation, which would wait for the other ranks: the scheduler
    sees this rank's heartbeat stop and ends every rank within MS_NODE_TIMEOUT (30 s by default), where a
    clean exit would leave the others waiting in their next collective until it times out.
    """
    print(f"error: rank {os.getenv('RANK_ID', '?')}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
