"""Typed configuration from command-line flags (and environment variables).

A config is a frozen dataclass. Each field that a user may set says so with
``option(...)``, which carries its help text; the parser is built from the
fields, so every default is written once, in the dataclass, and a new knob is
one field. Nested dataclass fields become groups of flags (an optional prefix
keeps their names apart). Validation lives in each config's ``__post_init__``
and raises ``ConfigError`` naming the field; ``parse`` reports it as the flag.

Two ways to fill a config:

* ``parse(parser, cls, args)``: every flag defaults to the field's default,
  or to ``$RECSYS_<FLAG>`` when the config allows the environment (services:
  compose and Kubernetes set them);
* ``overrides(cls, args)``: only the flags given on the command line (or by
  ``$RECSYS_<FLAG>``), as a nested dict to apply over a preset (the trainer's
  tuned starting points).

A secret (``option(..., secret=True)``: a token, a password, a key) never
travels in argv, where every user of the machine can read it: its flag is
``--<name>-file FILE``, and its environment variables are ``$RECSYS_<NAME>``
(the value) or ``$RECSYS_<NAME>_FILE`` (a file holding it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

ENV_PREFIX = "RECSYS_"
_NO_DEFAULT = dataclasses.MISSING


class ConfigError(ValueError):
    """A config value is unusable; ``field`` names it (dotted for nested configs)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require(condition: bool, field: str, message: str) -> None:
    """Raises ConfigError(field, message) unless ``condition``."""
    if not condition:
        raise ConfigError(field, message)


def require_valid(check: Callable[[Any], Any], value: Any, field: str) -> None:
    """Raises ConfigError(field, its message) where ``check(value)`` raises ValueError."""
    try:
        check(value)
    except ValueError as e:
        raise ConfigError(field, str(e)) from None


def require_distinct(values: tuple[str, ...], field: str) -> None:
    """Raises ConfigError(field, ...) naming the values ``values`` holds more than once."""
    repeated = sorted({value for value in values if values.count(value) > 1})
    require(not repeated, field, f"names {', '.join(repeated)} more than once: list each once")


def option(default: Any = _NO_DEFAULT, help: str = "", *, flag: str | None = None, choices: tuple | None = None,
           env: bool = True, parse: Callable[[str], Any] | None = None, prefix: str | None = None,
           metavar: str | None = None, secret: bool = False) -> Any:
    """A dataclass field that is also a command-line flag.

    ``flag`` overrides the name (default: the field name with '-' for '_',
    after the enclosing prefix); ``parse`` converts the flag's text (default:
    from the annotation); ``env=False`` ignores ``$RECSYS_<FLAG>``. For a nested
    dataclass field, ``prefix`` is put before its fields' flag names.
    ``secret``: a string given by file or environment only (module docstring).
    """
    meta = {"help": help, "flag": flag, "choices": choices, "env": env, "parse": parse, "prefix": prefix,
            "metavar": metavar, "secret": secret}
    if default is _NO_DEFAULT:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class _Flag:
    path: tuple[str, ...]  # field names from the top config down
    name: str  # without the leading "--"
    field: dataclasses.Field
    type: Any
    default: Any  # the field's default in its enclosing default instance (_NO_DEFAULT: required)

    @property
    def dest(self) -> str:
        return "__".join(self.path)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _flags(cls: type, default: Any = None, path: tuple[str, ...] = (), prefix: str = "") -> list[_Flag]:
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue  # not user-settable
        tp = hints[f.name]
        value = getattr(default, f.name) if default is not None else (
            f.default if f.default is not _NO_DEFAULT else
            f.default_factory() if f.default_factory is not _NO_DEFAULT else _NO_DEFAULT)
        if _is_config(tp):
            nested_prefix = prefix + (f.metadata["prefix"] or "")
            out += _flags(tp, None if value is _NO_DEFAULT else value, (*path, f.name), nested_prefix)
            continue
        name = f.metadata["flag"] or prefix + f.name.replace("_", "-")
        out.append(_Flag((*path, f.name), name, f, tp, value))
    return out


def _base_type(tp: Any) -> Any:
    """``int`` for ``int | None`` (and Optional[int]); the type itself otherwise."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def read_secret(path: str) -> str:
    """The secret held in the file ``path`` (surrounding whitespace dropped)."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:  # e.g. a key made by `head -c 32 /dev/urandom`
        raise argparse.ArgumentTypeError(f"{path} is not UTF-8 text (write a binary key as hex or base64)") \
            from None
    if not value:
        raise argparse.ArgumentTypeError(f"{path} is empty")
    return value


class SecretFile(argparse.Action):
    """``--<name>-file FILE``: stores what FILE holds. (A ``type=`` converter would
    also be applied to a default taken from the environment, which is the value.)"""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, read_secret(values))
        except argparse.ArgumentTypeError as e:
            parser.error(f"argument {option_string}: {e}")


def _converter(flag: _Flag) -> Callable[[str], Any]:
    if flag.field.metadata["parse"] is not None:
        return flag.field.metadata["parse"]
    tp = _base_type(flag.type)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        return lambda text: tuple(map(item, comma_list(text)))
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    return lambda text: tp(text)


def comma_list(text: str) -> list[str]:
    """The parts of a comma-separated flag value, the whitespace around each dropped; an empty (or blank) value is
    no parts. An empty part is an argparse.ArgumentTypeError (argparse names the flag): "u1,,u2" most likely lost
    an id between its commas, and dropping the part would quietly act on a list other than the one meant."""
    if not text.strip():
        return []
    parts = [part.strip() for part in text.split(",")]
    if "" in parts:
        raise argparse.ArgumentTypeError(f"part {parts.index('') + 1} of {text!r} is empty: give the values "
                                         "separated by single commas, with none before the first or after the last")
    return parts


# The longest deadline a tool's flag gives an RPC: past ~1e10 s gRPC's deadline overflows and the call fails at once
# with DEADLINE_EXCEEDED, as it does for 0, a negative, nan and inf.
MAX_DEADLINE_S = 86_400.0
# The largest int32: what gRPC's channel arguments (C ints), a request's int32 fields (k) and TensorFlow's int32
# shapes (a batch) take. A flag past it was an OverflowError's traceback, a request failed in the client, a tensor
# "out-of-range integer" naming no flag.
MAX_INT32 = 2**31 - 1
# numpy's generators take seeds in [0, 2**32) alone.
SEEDS = 2**32


def deadline_s(text: str) -> float:
    """A deadline flag's seconds: over 0 and at most ``MAX_DEADLINE_S`` (a day); an argparse.ArgumentTypeError
    (argparse names the flag) otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds <= MAX_DEADLINE_S:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give seconds over 0 and at most "
                                         f"{MAX_DEADLINE_S:g} (a day)")
    return seconds


def check_address(text: str) -> str:
    """A service's HOST:PORT (``unix:PATH`` passed on as is); ValueError otherwise: a port past 65535 reached
    another port (gRPC takes it modulo 65536), and none reached 443."""
    if text.startswith("unix:"):
        return text
    host, colon, port = text.rpartition(":")
    if not (colon and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 1 to 65535")
    return text


def host_port(text: str) -> str:
    """``check_address`` as an argparse type (argparse shows an ArgumentTypeError's message, not a ValueError's)."""
    try:
        return check_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def host_ports(text: str) -> list[str]:
    """A comma-separated flag of service addresses (``comma_list``), each ``host_port``."""
    return [host_port(part) for part in comma_list(text)]


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    # Only an environment variable reaches this (a flag is --name/--no-name): "ture" must not read as off.
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError("not a boolean (true/false, yes/no, on/off, 1/0)")
    return word in ("1", "true", "yes", "on")


def env_name(flag: str) -> str:
    """The environment variable that sets ``--flag`` (``flag`` without its dashes): ``$RECSYS_FLAG``."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _env_name(flag: _Flag) -> str:
    return env_name(flag.name)


def env_secret(flag: str) -> str | None:
    """A secret flag's value from the environment: what ``$RECSYS_<FLAG>_FILE`` names holds, else
    ``$RECSYS_<FLAG>``, either without surrounding whitespace; None when neither is set.
    argparse.ArgumentTypeError naming the variable if the file cannot be read."""
    env = env_name(flag)
    if os.environ.get(env + "_FILE"):
        try:
            return read_secret(os.environ[env + "_FILE"])
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"${env}_FILE: {e}") from None
    value = os.environ.get(env)
    return None if value is None else value.strip()


def add_secret_file(parser: argparse.ArgumentParser, group, flag: str, help: str) -> None:
    """``--<flag>-file FILE`` on a parser built by hand (recsys-client, recsys-loadtest), its default from the
    environment as ``option(secret=True)`` flags take theirs (``env_secret``); an unreadable
    ``$RECSYS_<FLAG>_FILE`` is a usage error. ``group``: the parser or one of its argument groups."""
    env = env_name(flag)
    try:
        default = env_secret(flag) or ""
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    group.add_argument(f"--{flag}-file", dest=flag.replace("-", "_"), action=SecretFile, default=default,
                       help=f"{help} (env {env} or {env}_FILE)")


def _env_default(flag: _Flag) -> Any:
    """The flag's value from the environment, or _NO_DEFAULT when none is set;
    argparse.ArgumentTypeError naming the variable if its value is unusable."""
    env = _env_name(flag)
    if flag.field.metadata["secret"]:
        value = env_secret(flag.name)
        return _NO_DEFAULT if value is None else value
    text = os.environ.get(env)
    if text is None:
        return _NO_DEFAULT
    convert = _converter(flag)
    try:
        value = convert(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        why = f" {convert.__name__} value {text!r}" if convert in (int, float) else f" value {text!r}: {e}"
        raise argparse.ArgumentTypeError(f"${env}: invalid{why}") from None
    # argparse checks a flag's text against its choices, never a default.
    choices = flag.field.metadata["choices"]
    if choices and value not in choices:
        allowed = ", ".join(map(str, choices))
        raise argparse.ArgumentTypeError(f"${env}: invalid choice {text!r} (choose from {allowed})")
    return value


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _presets_note(flag: _Flag, presets: dict[str, Any], is_bool: bool) -> str:
    """Where the flag's default is a preset's: "default X", and the presets that differ ("; Y in the history
    preset"). A flag without one shows none."""
    values = dict(presets)  # preset name -> the flag's value in it, walked down the flag's field path
    for field in flag.path:
        values = {preset: getattr(value, field) for preset, value in values.items()}
    by_value: list[tuple[Any, list[str]]] = []
    for preset, value in values.items():
        group = next((names for seen, names in by_value if seen == value), None)
        if group is None:
            by_value.append((value, [preset]))
        else:
            group.append(preset)
    by_value.sort(key=lambda entry: -len(entry[1]))  # stable: the first preset's value wins a tie
    word = (lambda v: "on" if v else "off") if is_bool else _shown
    if len(by_value) == 1 and (is_bool or by_value[0][0] in (None, "", ())):
        return ""  # as for flags without presets: --x / --no-x's usual default, and no value, go without saying
    if len(by_value) == len(presets) > 1:  # a value per preset: the flag that picks the preset (--tower)
        return f"default {word(flag.default)}"
    note = f"default {word(by_value[0][0])}"
    for value, names in by_value[1:]:
        note += f"; {word(value)} in the {', '.join(names)} preset{'s' if len(names) > 1 else ''}"
    return note


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
              defaults: bool = True, presets: dict[str, Any] | None = None) -> None:
    """Adds a flag for every ``option`` field of ``cls`` (nested configs included).

    ``defaults=True``: a flag defaults to ``$RECSYS_<FLAG>`` (if the field allows
    the environment), else to the field's default; a field without a default is
    a required flag. ``defaults=False``: every flag defaults to None (= not
    given), for ``overrides``, or to ``$RECSYS_<FLAG>`` when it is set (given);
    its help shows the value in each of ``presets`` (configs of ``cls`` by name),
    where the run takes its defaults, rather than the field's.
    """
    for flag in _flags(cls):
        meta = flag.field.metadata
        kwargs: dict[str, Any] = {"dest": flag.dest}
        env = _env_name(flag) if meta["env"] else None
        from_env = _NO_DEFAULT
        if env:
            try:
                from_env = _env_default(flag)
            except argparse.ArgumentTypeError as e:
                # One line naming the variable and exit 2, as for a bad flag (not a traceback).
                if isinstance(parser, argparse.ArgumentParser):
                    parser.error(str(e))
                # A group does not know its parser: the line argparse would print, with the program's name.
                print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
        is_bool = _base_type(flag.type) is bool
        if is_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta["secret"]:
            kwargs["action"] = SecretFile
            kwargs["metavar"] = "FILE"
        else:
            kwargs["type"] = _converter(flag)
            if not meta["choices"]:
                kwargs["metavar"] = meta["metavar"] or flag.name.rsplit("-", 1)[-1].upper()
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        help_text = meta["help"]
        notes = []
        if env:
            notes.append(f"env {env} or {env}_FILE" if meta["secret"] else f"env {env}")
        if presets is not None:
            notes.append(_presets_note(flag, presets, is_bool))
        elif flag.default is not _NO_DEFAULT and flag.default not in (None, "", ()) and not is_bool \
                and not meta["secret"]:
            notes.append(f"default {_shown(flag.default)}")
        notes = [note for note in notes if note]
        if notes:
            help_text += f" ({', '.join(notes)})"
        if defaults:
            default = flag.default if from_env is _NO_DEFAULT else from_env
            kwargs["default"] = None if default is _NO_DEFAULT else default
            kwargs["required"] = default is _NO_DEFAULT
        else:  # the environment's value counts as given, as the flag would
            kwargs["default"] = None if from_env is _NO_DEFAULT else from_env
        name = f"{flag.name}-file" if meta["secret"] else flag.name
        parser.add_argument(f"--{name}", help=help_text.replace("%", "%%"), **kwargs)


def _build(cls: type, values: dict[str, Any], path: tuple[str, ...], by_path: dict[tuple[str, ...], _Flag],
           extra: dict[str, Any] | None = None) -> Any:
    kwargs = dict(extra or {})
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = (*path, f.name)
        if _is_config(hints[f.name]) and "help" in f.metadata:
            kwargs[f.name] = _build(hints[f.name], values, key, by_path)
        elif key in by_path:
            kwargs[f.name] = values[by_path[key].dest]
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(".".join((*path, e.field)), e.message) from None


def _flag_at(cls: type, field_path: str) -> _Flag | None:
    """The flag that sets the (dotted) field ``field_path`` of ``cls``; None if no flag does."""
    return next((flag for flag in _flags(cls) if ".".join(flag.path) == field_path), None)


def flag_name(cls: type, field_path: str) -> str:
    """``--name`` of the flag that sets the (dotted) field ``field_path`` of ``cls``."""
    flag = _flag_at(cls, field_path)
    if flag is None:
        return field_path
    return f"--{flag.name}-file" if flag.field.metadata["secret"] else f"--{flag.name}"


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The config ``cls`` from flags added by ``add_flags(..., defaults=True)``,
    plus ``extra`` top-level fields that are not flags; raises ConfigError
    (dotted field) if a value is unusable."""
    flags = _flags(cls)
    config = _build(cls, vars(args), (), {f.path: f for f in flags}, extra)
    # After each config's own checks, which say more where they have something to say. Python's float() reads "inf"
    # and "nan": as a timeout or a wait, gRPC reads inf as already expired, a batch waits for ever, a back-off never
    # ends.
    for flag in flags:
        value = getattr(args, flag.dest, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(".".join(flag.path), "must be a finite number")
    return config


def parse(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None = None) -> Any:
    """Parses ``argv`` into ``cls``; a bad value exits with one line naming its flag."""
    args = parser.parse_args(argv)
    try:
        return from_args(cls, args)
    except ConfigError as e:
        parser.error(f"{flag_name(cls, e.field)} {e.message}{_environment_note(parser, cls, args, e.field)}")


def _environment_note(parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace, field_path: str) -> str:
    """" (set by $RECSYS_<FLAG>)" where the refused field's value is its environment variable's: the error is read
    beside a command line (a pod's args, a compose command) that does not hold the value."""
    flag = _flag_at(cls, field_path)
    if flag is None or not flag.field.metadata["env"]:
        return ""
    env = _env_name(flag)
    from_env = env in os.environ or f"{env}_FILE" in os.environ
    value, default = getattr(args, flag.dest), parser.get_default(flag.dest)
    # ``is`` first: a nan taken from the environment is its own default but equals nothing.
    return f" (set by ${env})" if from_env and (value is default or value == default) else ""


def overrides(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flags of ``cls`` given on the command line (added with ``defaults=False``),
    as a nested dict of field values, for ``replace_nested``."""
    out: dict[str, Any] = {}
    values = vars(args)
    for flag in _flags(cls):
        value = values.get(flag.dest)
        if value is None:
            continue
        node = out
        for name in flag.path[:-1]:
            node = node.setdefault(name, {})
        node[flag.path[-1]] = value
    return out


def replace_nested(config: Any, changes: dict[str, Any]) -> Any:
    """``dataclasses.replace`` that also replaces inside nested configs; every
    ``__post_init__`` runs again on the result, so the new config is validated."""
    direct = {}
    for name, value in changes.items():
        current = getattr(config, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            try:
                value = replace_nested(current, value)
            except ConfigError as e:
                raise ConfigError(f"{name}.{e.field}", e.message) from None
        direct[name] = value
    return dataclasses.replace(config, **direct)
