"""Typed configuration from layers: defaults < YAML file < environment < explicit overrides.

A config is a (possibly nested) dataclass whose fields carry their help text::

    @dataclass(frozen=True)
    class KVSection:
        block_size: int = field(default=64, metadata={"help": "tokens per KV block"})

    @dataclass(frozen=True)
    class EngineConfig:
        model: str = field(metadata={"help": "model name or path"})
        kv: KVSection = field(default_factory=KVSection, metadata={"help": "KV cache"})

Every leaf option has one path and three spellings, all derived from the field::

    path          kv.block_size
    env           SAGELLM_KV__BLOCK_SIZE        (sections joined by "__")
    flag          --kv-block-size               (argparse dest / typer param: kv__block_size)

``load_config(EngineConfig, file="x.yaml", overrides={"kv.block_size": 32})``
applies, in order: the dataclass defaults, the YAML file (nested mappings,
unknown keys rejected), ``SAGELLM_*`` variables, then ``overrides`` (what CLI
flags produced; ``None`` values mean "flag not given" and are skipped). Strings
from env and flags are coerced to the field's type:

=========================  ==============================================
bool                       true/false, 1/0, yes/no, on/off (any case)
int / float                Python literals (``32``, ``0.5``)
Enum / Literal             a value (Enum names also accepted, any case)
list / tuple / set         comma-separated (``a,b,c``; empty string = empty)
dict[str, X]               ``k=v,k2=v2``
Optional[X]                ``""``, ``none`` or ``null`` mean None
=========================  ==============================================

Every failure is a ``ConfigError`` naming the option, the bad value, where it
came from (file/env/flag) and what is accepted. Variables with the prefix that
name no option are ignored (other components own other ``SAGELLM_*`` names).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Optional, TypeVar

import yaml

from sagellm.core._typing import (
    describe_type,
    field_types,
    init_fields,
    is_dataclass_type,
    is_enum_type,
    is_union,
    optional_inner,
)
from sagellm.core.serialization import SerializationError, decode, encode

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENV_PREFIX = "SAGELLM"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"", "none", "null"})


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message says which and where from."""


@dataclass(frozen=True)
class OptionSpec:
    """One leaf option of a config dataclass, in all its spellings.

    Attributes:
        path: dotted path, e.g. ``kv.block_size``.
        flag: CLI flag, e.g. ``--kv-block-size``.
        dest: Python identifier for argparse/typer, e.g. ``kv__block_size``.
        env: environment variable, e.g. ``SAGELLM_KV__BLOCK_SIZE``.
        type: the field's type hint.
        help: from ``field(metadata={"help": ...})``.
        default: the default value, or ``dataclasses.MISSING`` when required.
    """

    path: str
    flag: str
    dest: str
    env: str
    type: Any
    help: str
    default: Any

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def accepted(self) -> str:
        return describe_type(self.type)

    def help_text(self) -> str:
        """Help line for a CLI: the field help plus env name, default and accepted values."""
        default = "required" if self.required else f"default: {_show(self.default)}"
        return f"{self.help} [env {self.env}; {default}; accepts {self.accepted}]"


@dataclass(frozen=True)
class ResolvedConfig(Generic[C]):
    """A built config plus where each non-default option came from (path -> "file x"/"env X"/"flag --x")."""

    config: C
    sources: dict[str, str]


def _show(value: Any) -> str:
    encoded = encode(value)
    return ",".join(map(str, encoded)) if isinstance(encoded, list) else repr(encoded)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def env_name(path: str, env_prefix: str = DEFAULT_ENV_PREFIX) -> str:
    return f"{env_prefix}_" + "__".join(part.upper() for part in path.split("."))


def option_specs(cls: type, *, env_prefix: str = DEFAULT_ENV_PREFIX) -> tuple[OptionSpec, ...]:
    """Every leaf option of config dataclass ``cls``, depth first in field order.

    Fields with ``metadata={"cli": False}`` get no flag but still read file and env.

    Raises:
        TypeError: ``cls`` is not a dataclass, a field has no ``help``, a section is
            Optional, or two options would share a flag.
    """
    if not is_dataclass_type(cls):
        raise TypeError(f"option_specs: {cls!r} is not a dataclass")
    specs: list[OptionSpec] = []
    _collect(cls, "", dataclasses.MISSING, env_prefix, specs)
    flags: dict[str, str] = {}
    for spec in specs:
        if spec.flag in flags:
            raise TypeError(f"options {flags[spec.flag]!r} and {spec.path!r} both map to flag {spec.flag}")
        flags[spec.flag] = spec.path
    return tuple(specs)


def _collect(cls: type, prefix: str, base: Any, env_prefix: str, out: list[OptionSpec]) -> None:
    hints = field_types(cls)
    for f in init_fields(cls):
        path = prefix + f.name
        tp = hints[f.name]
        help_text = f.metadata.get("help")
        if not isinstance(help_text, str) or not help_text:
            raise TypeError(f"{cls.__name__}.{f.name}: config fields need field(metadata={{'help': '...'}})")
        default = getattr(base, f.name) if base is not dataclasses.MISSING else _field_default(f)
        inner = optional_inner(tp)
        if inner is not None and is_dataclass_type(inner):
            raise TypeError(f"{cls.__name__}.{f.name}: Optional config sections are not supported")
        if is_dataclass_type(tp):
            _collect(tp, path + ".", default, env_prefix, out)
            continue
        out.append(
            OptionSpec(
                path=path,
                flag="--" + path.replace(".", "-").replace("_", "-"),
                dest=path.replace(".", "__"),
                env=env_name(path, env_prefix),
                type=tp,
                help=help_text,
                default=default,
            )
        )


def _cli_specs(cls: type, env_prefix: str) -> list[OptionSpec]:
    specs = option_specs(cls, env_prefix=env_prefix)
    return [s for s in specs if _leaf_field(cls, s.path).metadata.get("cli", True)]


def _leaf_field(cls: type, path: str) -> dataclasses.Field:
    parts = path.split(".")
    for part in parts[:-1]:
        cls = field_types(cls)[part]
    return next(f for f in init_fields(cls) if f.name == parts[-1])


# ---------------------------------------------------------------- coercion


def coerce_option(tp: Any, value: Any, path: str, source: str) -> Any:
    """Convert ``value`` (a string from env/flags, or a YAML/Python value) to type ``tp``.

    Raises:
        ConfigError: naming ``path``, ``value``, ``source`` and the accepted values.
    """

    def fail() -> ConfigError:
        accepted = describe_type(tp)
        if isinstance(value, str):
            accepted += _string_form(tp)
        return ConfigError(f"option {path!r} from {source}: got {value!r}; accepted: {accepted}")

    inner = optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        try:
            return coerce_option(inner, value, path, source)
        except ConfigError:
            raise fail() from None
    if isinstance(value, str) and tp is not str and tp is not Any:
        parsed = _parse_str(tp, value)
        if parsed is _FAIL:
            raise fail()
        return parsed
    try:
        return decode(tp, value, path)
    except SerializationError:
        raise fail() from None


_FAIL = object()


def _string_form(tp: Any) -> str:
    """How a string spells a list or mapping, for error messages."""
    inner = optional_inner(tp)
    origin = typing.get_origin(inner if inner is not None else tp)
    if origin in (list, tuple, set, frozenset):
        return " (comma-separated)"
    if origin is dict:
        return " (comma-separated key=value pairs)"
    return ""


def _parse_str(tp: Any, text: str) -> Any:
    """Parse ``text`` as ``tp``; ``_FAIL`` when it does not parse."""
    s = text.strip()
    if tp is str or tp is Any:
        return text
    if tp is bool:
        low = s.lower()
        return True if low in _TRUE else False if low in _FALSE else _FAIL
    if tp is int:
        try:
            return int(s)
        except ValueError:
            return _FAIL
    if tp is float:
        try:
            return float(s)
        except ValueError:
            return _FAIL
    if is_enum_type(tp):
        for member in tp:
            if str(member.value) == s or member.name.lower() == s.lower():
                return member
        return _FAIL
    inner = optional_inner(tp)
    if inner is not None:
        return None if s.lower() in _NONE else _parse_str(inner, text)
    if is_union(tp):
        for arg in typing.get_args(tp):
            parsed = _parse_str(arg, text)
            if parsed is not _FAIL:
                return parsed
        return _FAIL
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        for arg in args:
            if str(arg) == s:
                return arg
        return _FAIL
    if origin in (list, tuple, set, frozenset):
        items = [p.strip() for p in s.split(",")] if s else []
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                return _FAIL
            elem_types = list(args)
        else:
            elem_types = [args[0] if args else str] * len(items)
        parsed_items = [_parse_str(et, item) for et, item in zip(elem_types, items)]
        if any(p is _FAIL for p in parsed_items):
            return _FAIL
        return origin(parsed_items)
    if origin is dict:
        ktype, vtype = args if args else (str, str)
        result = {}
        for pair in (p for p in s.split(",") if p.strip()):
            if "=" not in pair:
                return _FAIL
            k, v = (x.strip() for x in pair.split("=", 1))
            pk, pv = _parse_str(ktype, k), _parse_str(vtype, v)
            if pk is _FAIL or pv is _FAIL:
                return _FAIL
            result[pk] = pv
        return result
    return _FAIL


# ---------------------------------------------------------------- layers


def _flatten(
    cls: type,
    data: Any,
    prefix: str,
    source: str,
    out: dict[str, tuple[Any, str]],
    *,
    leaf_source: Callable[[str], str],
    skip_none: bool,
) -> None:
    """Validate a nested mapping against ``cls`` and record its leaves as path -> (value, source).

    ``leaf_source(path)`` names where a leaf came from; ``skip_none`` drops None leaves
    (flags not given) instead of coercing them.
    """
    where = prefix.rstrip(".") or "<top level>"
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: section {where!r} got {data!r}; accepted: a mapping")
    hints = field_types(cls)
    valid = [f.name for f in init_fields(cls)]
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(
                f"{source}: unknown option {prefix + str(key)!r}; valid options in {where!r}: {sorted(valid)}"
            )
        path = prefix + key
        tp = hints[key]
        if is_dataclass_type(tp):
            _flatten(tp, value, path + ".", source, out, leaf_source=leaf_source, skip_none=skip_none)
        elif value is not None or not skip_none:
            src = leaf_source(path)
            out[path] = (coerce_option(tp, value, path, src), src)


def _read_file(file: str | os.PathLike[str], section: str | None) -> Any:
    path = Path(file)
    source = f"file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    if data is None:
        data = {}
    if section:
        for part in section.split("."):
            if not isinstance(data, Mapping) or part not in data:
                raise ConfigError(f"{source}: no section {section!r}")
            data = data[part]
    return data


def resolve_config(
    cls: type[C],
    *,
    file: str | os.PathLike[str] | None = None,
    section: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_prefix: str = DEFAULT_ENV_PREFIX,
) -> ResolvedConfig[C]:
    """Build ``cls`` from defaults < ``file`` < ``env`` < ``overrides`` and report each value's source.

    Args:
        cls: the config dataclass.
        file: YAML file with a (nested) mapping of options; None = no file.
        section: dotted key inside the file holding this config (None = the whole file).
        env: environment to read ``{env_prefix}_*`` from; None = ``os.environ``.
        overrides: explicit values (CLI flags): dotted paths (``"kv.block_size"``) or nested
            mappings; None values are skipped.
        env_prefix: prefix of environment variable names.

    Raises:
        ConfigError: unknown option, unparsable value, missing required option, or a value
            the dataclass rejects -- always naming the option and its source.
    """
    specs = {s.path: s for s in option_specs(cls, env_prefix=env_prefix)}
    values: dict[str, tuple[Any, str]] = {}

    if file is not None:
        file_source = f"file {str(file)!r}"
        _flatten(
            cls, _read_file(file, section), "", file_source, values, leaf_source=lambda p: file_source, skip_none=False
        )

    environ = os.environ if env is None else env
    for spec in specs.values():
        if spec.env in environ:
            src = f"env {spec.env}"
            values[spec.path] = (coerce_option(spec.type, environ[spec.env], spec.path, src), src)

    if overrides:
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(key, str) and "." in key:
                if key not in specs:
                    raise ConfigError(f"flag for unknown option {key!r}; valid options: {sorted(specs)}")
                src = f"flag {specs[key].flag}"
                values[key] = (coerce_option(specs[key].type, value, key, src), src)
            else:
                nested[key] = value
        if nested:
            _flatten(
                cls, nested, "", "flags", values, leaf_source=lambda p: f"flag {specs[p].flag}", skip_none=True
            )

    config = _build(cls, "", dataclasses.MISSING, values, specs)
    return ResolvedConfig(config=config, sources={p: s for p, (_, s) in sorted(values.items())})


def load_config(
    cls: type[C],
    *,
    file: str | os.PathLike[str] | None = None,
    section: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_prefix: str = DEFAULT_ENV_PREFIX,
) -> C:
    """``resolve_config(...).config`` -- see ``resolve_config``."""
    return resolve_config(
        cls, file=file, section=section, env=env, overrides=overrides, env_prefix=env_prefix
    ).config


def _build(cls: type, prefix: str, base: Any, values: dict[str, tuple[Any, str]], specs: dict[str, OptionSpec]) -> Any:
    hints = field_types(cls)
    kwargs: dict[str, Any] = {}
    for f in init_fields(cls):
        path = prefix + f.name
        tp = hints[f.name]
        if is_dataclass_type(tp):
            sub_base = getattr(base, f.name) if base is not dataclasses.MISSING else _field_default(f)
            touched = any(p.startswith(path + ".") for p in values)
            if touched or sub_base is dataclasses.MISSING:
                kwargs[f.name] = _build(tp, path + ".", sub_base, values, specs)
        elif path in values:
            kwargs[f.name] = values[path][0]
        elif base is dataclasses.MISSING and _field_default(f) is dataclasses.MISSING:
            spec = specs[path]
            raise ConfigError(
                f"missing required option {path!r}; set it in the config file, env {spec.env} or flag {spec.flag}"
            )
    try:
        if base is not dataclasses.MISSING:
            return dataclasses.replace(base, **kwargs)
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        mine = {p: s for p, (_, s) in values.items() if p.startswith(prefix) and "." not in p[len(prefix):]}
        named = {p: s for p, s in mine.items() if f".{p.rsplit('.', 1)[-1]}:" in str(exc)}
        cited = named or mine
        origin = ", ".join(f"{p!r} from {s}" for p, s in sorted(cited.items())) or "defaults only"
        raise ConfigError(f"{exc} [{origin}]") from exc


# ---------------------------------------------------------------- CLI


def add_argparse_options(
    parser: argparse.ArgumentParser, cls: type, *, env_prefix: str = DEFAULT_ENV_PREFIX
) -> None:
    """Add one flag per option of ``cls`` (default None = "not given"; bools get ``--no-x``)."""
    for spec in _cli_specs(cls, env_prefix):
        if _flag_kind(spec.type) is bool:
            parser.add_argument(
                spec.flag, dest=spec.dest, action=argparse.BooleanOptionalAction, default=None, help=spec.help_text()
            )
        else:
            parser.add_argument(spec.flag, dest=spec.dest, default=None, metavar="VALUE", help=spec.help_text())


def overrides_from_namespace(
    namespace: argparse.Namespace, cls: type, *, env_prefix: str = DEFAULT_ENV_PREFIX
) -> dict[str, Any]:
    """The ``overrides`` mapping (path -> value) for flags that were given."""
    out = {}
    for spec in _cli_specs(cls, env_prefix):
        value = getattr(namespace, spec.dest, None)
        if value is not None:
            out[spec.path] = value
    return out


def _flag_kind(tp: Any) -> Any:
    """The Python type a CLI parser should produce for an option (bool/int/float; str otherwise)."""
    inner = optional_inner(tp)
    tp = inner if inner is not None else tp
    return tp if tp in (bool, int, float) else str


def with_config_options(
    cls: type,
    option_factory: Callable[..., Any],
    *,
    param: str = "config_overrides",
    env_prefix: str = DEFAULT_ENV_PREFIX,
) -> Callable[[F], F]:
    """Decorate a CLI command so it takes one option per config field.

    The command must accept a ``param`` argument (default ``config_overrides``); the
    decorator removes it from the visible signature, adds a keyword parameter per
    option (``kv__block_size`` for ``--kv-block-size``) whose default is
    ``option_factory(None, flag_decl, help=...)``, and calls the command with
    ``param`` = {path: value} of the flags given. With typer::

        @app.command()
        @with_config_options(EngineConfig, typer.Option)
        def start(config_overrides: dict):
            config = load_config(EngineConfig, overrides=config_overrides)

    ``option_factory`` is passed in so that core never imports a CLI library.
    """
    specs = _cli_specs(cls, env_prefix)

    def decorator(func: F) -> F:
        sig = inspect.signature(func)
        if param not in sig.parameters:
            raise TypeError(f"{func.__qualname__} must take a {param!r} parameter to receive config overrides")
        kept = [p for p in sig.parameters.values() if p.name != param]
        taken = {p.name for p in kept}
        added = []
        for spec in specs:
            if spec.dest in taken:
                raise TypeError(f"{func.__qualname__}: parameter {spec.dest!r} clashes with config option {spec.path!r}")
            kind = _flag_kind(spec.type)
            decl = f"{spec.flag}/--no-{spec.flag[2:]}" if kind is bool else spec.flag
            added.append(
                inspect.Parameter(
                    spec.dest,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=option_factory(None, decl, help=spec.help_text()),
                    annotation=Optional[kind],
                )
            )
        var_kw = [p for p in kept if p.kind is inspect.Parameter.VAR_KEYWORD]
        params = [p for p in kept if p.kind is not inspect.Parameter.VAR_KEYWORD] + added + var_kw

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = {}
            for spec in specs:
                value = kwargs.pop(spec.dest, None)
                if value is not None:
                    overrides[spec.path] = value
            kwargs[param] = overrides
            return func(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        annotations = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
        if sig.return_annotation is not inspect.Signature.empty:
            annotations["return"] = sig.return_annotation
        wrapper.__annotations__ = annotations
        return typing.cast(F, wrapper)

    return decorator

