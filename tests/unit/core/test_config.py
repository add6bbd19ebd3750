from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import pytest

from sagellm.core.config import (
    ConfigError,
    add_argparse_options,
    load_config,
    option_specs,
    overrides_from_namespace,
    resolve_config,
    with_config_options,
)


class Mode(str, Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass(frozen=True)
class KVSection:
    block_size: int = field(default=64, metadata={"help": "tokens per KV block"})
    dtype: str = field(default="float16", metadata={"help": "KV dtype"})

    def __post_init__(self):
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"KVSection.block_size: got {self.block_size!r}; accepted: a power of two")


@dataclass(frozen=True)
class DemoConfig:
    model: str = field(metadata={"help": "model name or path"})
    port: int = field(default=8000, metadata={"help": "HTTP port"})
    ratio: float = field(default=0.5, metadata={"help": "a fraction"})
    debug: bool = field(default=False, metadata={"help": "verbose logs"})
    mode: Mode = field(default=Mode.SAFE, metadata={"help": "run mode"})
    devices: tuple[int, ...] = field(default=(0,), metadata={"help": "device ids"})
    tenant: Optional[str] = field(default="default", metadata={"help": "tenant"})
    labels: dict[str, str] = field(default_factory=dict, metadata={"help": "labels"})
    kv: KVSection = field(default_factory=lambda: KVSection(block_size=32), metadata={"help": "KV cache"})
    secret: str = field(default="", metadata={"help": "not a flag", "cli": False})


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_specs():
    specs = {s.path: s for s in option_specs(DemoConfig)}
    kv = specs["kv.block_size"]
    assert (kv.flag, kv.dest, kv.env, kv.default) == ("--kv-block-size", "kv__block_size", "SAGELLM_KV__BLOCK_SIZE", 32)
    assert specs["model"].required and specs["model"].env == "SAGELLM_MODEL"
    assert specs["debug"].help_text() == "verbose logs [env SAGELLM_DEBUG; default: False; accepts a boolean]"
    assert list(specs) == [
        "model", "port", "ratio", "debug", "mode", "devices", "tenant", "labels", "kv.block_size", "kv.dtype", "secret",
    ]


def test_precedence_defaults_file_env_flag(tmp_path):
    path = write(tmp_path, "model: from-file\nport: 9000\nkv:\n  block_size: 128\n  dtype: int8\n")
    env = {"SAGELLM_PORT": "9100", "SAGELLM_KV__BLOCK_SIZE": "256", "SAGELLM_UNRELATED": "x"}
    resolved = resolve_config(DemoConfig, file=path, env=env, overrides={"kv.block_size": 16, "debug": None})
    c = resolved.config
    assert c.model == "from-file"          # file
    assert c.port == 9100                   # env beats file
    assert c.kv.block_size == 16            # flag beats env and file
    assert c.kv.dtype == "int8"             # file
    assert c.ratio == 0.5 and c.debug is False  # defaults (None flag = not given)
    assert resolved.sources == {
        "kv.block_size": "flag --kv-block-size",
        "kv.dtype": f"file {str(path)!r}",
        "model": f"file {str(path)!r}",
        "port": "env SAGELLM_PORT",
    }


def test_nested_default_factory_is_kept_when_section_untouched():
    c = load_config(DemoConfig, env={"SAGELLM_MODEL": "m"})
    assert c.kv == KVSection(block_size=32)
    c = load_config(DemoConfig, env={"SAGELLM_MODEL": "m", "SAGELLM_KV__DTYPE": "int4"})
    assert c.kv == KVSection(block_size=32, dtype="int4")


def test_env_coercion():
    env = {
        "SAGELLM_MODEL": "m", "SAGELLM_RATIO": "0.25", "SAGELLM_DEBUG": "Yes", "SAGELLM_MODE": "FAST",
        "SAGELLM_DEVICES": "0, 1,3", "SAGELLM_TENANT": "none", "SAGELLM_LABELS": "zone=a, rack=7",
    }
    c = load_config(DemoConfig, env=env)
    assert c.ratio == 0.25 and c.debug is True and c.mode is Mode.FAST
    assert c.devices == (0, 1, 3) and c.tenant is None and c.labels == {"zone": "a", "rack": "7"}
    assert load_config(DemoConfig, env={"SAGELLM_MODEL": "m", "SAGELLM_DEVICES": ""}).devices == ()
    assert load_config(DemoConfig, env={"SAGELLM_MODEL": "m", "SAGELLM_MODE": "safe"}).mode is Mode.SAFE


@pytest.mark.parametrize("var,value,accepted", [
    ("SAGELLM_PORT", "80.5", "an integer"),
    ("SAGELLM_DEBUG", "maybe", "a boolean"),
    ("SAGELLM_MODE", "turbo", "one of 'fast', 'safe'"),
    ("SAGELLM_DEVICES", "0,x", "a list of items, each an integer (comma-separated)"),
    ("SAGELLM_RATIO", "half", "a number"),
    ("SAGELLM_LABELS", "zone", "a mapping (comma-separated key=value pairs)"),
])
def test_env_coercion_errors(var, value, accepted):
    path = var.removeprefix("SAGELLM_").lower()
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, env={"SAGELLM_MODEL": "m", var: value})
    assert str(err.value) == f"option {path!r} from env {var}: got {value!r}; accepted: {accepted}"


def test_nested_env_error_names_section_variable():
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, env={"SAGELLM_MODEL": "m", "SAGELLM_KV__BLOCK_SIZE": "big"})
    assert str(err.value) == "option 'kv.block_size' from env SAGELLM_KV__BLOCK_SIZE: got 'big'; accepted: an integer"


def test_dataclass_validation_error_cites_source():
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, env={"SAGELLM_MODEL": "m", "SAGELLM_KV__BLOCK_SIZE": "48"})
    assert str(err.value) == (
        "KVSection.block_size: got 48; accepted: a power of two ['kv.block_size' from env SAGELLM_KV__BLOCK_SIZE]"
    )


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, file=write(tmp_path, "model: m\nkv:\n  blocksize: 8\n"), env={})
    assert "unknown option 'kv.blocksize'; valid options in 'kv': ['block_size', 'dtype']" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, file=write(tmp_path, "model: m\nport: eighty\n"), env={})
    assert str(err.value) == f"option 'port' from file {str(tmp_path / 'cfg.yaml')!r}: got 'eighty'; accepted: an integer"
    with pytest.raises(ConfigError, match="got 8080.5; accepted: an integer"):
        load_config(DemoConfig, file=write(tmp_path, "model: m\nport: 8080.5\n"), env={})
    with pytest.raises(ConfigError, match="section 'kv' got 5; accepted: a mapping"):
        load_config(DemoConfig, file=write(tmp_path, "model: m\nkv: 5\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(DemoConfig, file=tmp_path / "absent.yaml", env={})


def test_file_section_and_native_yaml_types(tmp_path):
    path = write(tmp_path, "engine:\n  model: m\n  devices: [2, 3]\n  debug: true\n  mode: fast\nother: 1\n")
    c = load_config(DemoConfig, file=path, section="engine", env={})
    assert c.devices == (2, 3) and c.debug is True and c.mode is Mode.FAST
    with pytest.raises(ConfigError, match="no section 'nope'"):
        load_config(DemoConfig, file=path, section="nope", env={})


def test_missing_required_option():
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, env={})
    assert str(err.value) == (
        "missing required option 'model'; set it in the config file, env SAGELLM_MODEL or flag --model"
    )


def test_override_errors_name_the_flag():
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, env={}, overrides={"model": "m", "kv.block_size": "x"})
    assert str(err.value) == "option 'kv.block_size' from flag --kv-block-size: got 'x'; accepted: an integer"
    with pytest.raises(ConfigError, match="flag for unknown option 'kv.size'"):
        load_config(DemoConfig, env={}, overrides={"model": "m", "kv.size": 1})
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        load_config(DemoConfig, env={}, overrides={"model": "m", "colour": 1})
    c = load_config(DemoConfig, env={}, overrides={"model": "m", "kv": {"dtype": "int8"}})
    assert c.kv == KVSection(block_size=32, dtype="int8")


def test_argparse_flags_from_the_same_fields():
    parser = argparse.ArgumentParser()
    add_argparse_options(parser, DemoConfig)
    ns = parser.parse_args(["--model", "m", "--kv-block-size", "8", "--no-debug", "--devices", "1,2"])
    overrides = overrides_from_namespace(ns, DemoConfig)
    assert overrides == {"model": "m", "debug": False, "devices": "1,2", "kv.block_size": "8"}
    c = load_config(DemoConfig, env={"SAGELLM_DEBUG": "1", "SAGELLM_KV__BLOCK_SIZE": "4"}, overrides=overrides)
    assert c.kv.block_size == 8 and c.debug is False and c.devices == (1, 2)
    assert "--secret" not in parser.format_help()
    assert "SAGELLM_KV__BLOCK_SIZE" in parser.format_help()


def test_typer_command_gets_config_options():
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    app = typer.Typer()
    seen = {}

    @app.command()
    @with_config_options(DemoConfig, typer.Option)
    def start(name: str = typer.Argument("x"), config_overrides: dict = None):
        seen["name"] = name
        seen["config"] = load_config(DemoConfig, env={}, overrides=config_overrides)

    runner = CliRunner()
    result = runner.invoke(app, ["hello", "--model", "m", "--kv-block-size", "8", "--debug", "--mode", "fast"])
    assert result.exit_code == 0, result.output
    assert seen["name"] == "hello"
    cfg = seen["config"]
    assert (cfg.model, cfg.kv.block_size, cfg.debug, cfg.mode, cfg.port) == ("m", 8, True, Mode.FAST, 8000)

    result = runner.invoke(app, ["--help"])
    assert "--kv-block-size" in result.output and "--no-debug" in result.output
    assert "--secret" not in result.output


def test_decorator_requires_overrides_parameter():
    with pytest.raises(TypeError, match="must take a 'config_overrides' parameter"):
        with_config_options(DemoConfig, lambda *a, **k: None)(lambda: None)


def test_help_is_required():
    @dataclass
    class NoHelp:
        x: int = 1

    with pytest.raises(TypeError, match=r"NoHelp.x: config fields need field\(metadata=\{'help': '...'\}\)"):
        option_specs(NoHelp)
