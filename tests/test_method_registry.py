"""Hyperparameters as data (parse, override, document) and the method registry the CLI uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
from typer.testing import CliRunner

from mkedit.cli import app
from mkedit.methods.base import EditMethod
from mkedit.methods.config import ConfigError, MethodConfig, parse_overrides
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.methods.registry import (
    UnknownMethodError,
    check_method_options,
    get_method,
    method_names,
    register_method,
)


@dataclass(frozen=True)
class DemoConfig(MethodConfig):
    layers: tuple[int, ...] = (1, 2)
    """Layers to edit."""
    rate: float = 0.5
    """Learning
    rate."""
    mode: Literal["a", "b"] = "a"
    steps: int | None = None
    flag: bool = False


def test_overrides_parse_by_field_type() -> None:
    config = DemoConfig().with_overrides(
        {"layers": "3, 4,5", "rate": "1e-3", "mode": "b", "steps": "none", "flag": "true"}
    )
    assert config == DemoConfig(layers=(3, 4, 5), rate=1e-3, mode="b", steps=None, flag=True)
    assert DemoConfig().with_overrides({"steps": "7"}).steps == 7


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("speed", "1", "unknown hyperparameter 'speed'.*valid: layers, rate, mode, steps, flag"),
        ("rate", "fast", "--set rate=fast.*expected float"),
        ("mode", "c", "not one of a, b"),
        ("flag", "maybe", "not a boolean"),
    ],
)
def test_bad_overrides_are_clear_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DemoConfig().with_overrides({key: value})


def test_validation_errors_of_the_config_become_config_errors() -> None:
    with pytest.raises(ConfigError, match="beta"):
        LuLafnConfig().with_overrides({"beta": "2"})


def test_parse_overrides_needs_key_value_pairs() -> None:
    assert parse_overrides(["a=1", "b = x,y", "c="]) == {"a": "1", "b": "x,y", "c": ""}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["oops"])


def test_field_docs_and_dict_round_trip() -> None:
    docs = DemoConfig.field_docs()
    assert docs["layers"] == "Layers to edit." and docs["rate"] == "Learning rate." and "mode" not in docs
    assert DemoConfig.from_dict(DemoConfig(layers=(7,)).to_dict()) == DemoConfig(layers=(7,))
    with pytest.raises(ConfigError, match="unknown DemoConfig fields"):
        DemoConfig.from_dict({"nope": 1})
    lu_docs = LuLafnConfig.field_docs()
    assert all(lu_docs.get(name) for name, _, _ in LuLafnConfig.describe_fields()), "every field needs help text"


def test_every_registered_method_documents_every_hyperparameter() -> None:
    for name in method_names():
        cls = get_method(name)
        assert cls.name == name and cls.summary
        missing = [field for field, _, doc in cls.config_class.describe_fields() if not doc]
        assert not missing, f"{name}: fields without help text: {missing}"


def test_registry() -> None:
    assert {"lu-lafns", "lora-ft", "remake", "m-rome", "m-memit", "m-pmet"} <= set(method_names())
    assert get_method("lu-lafns") is LuLafnEditor
    with pytest.raises(UnknownMethodError, match=r"unknown method .rome.; available: .*lu-lafns"):
        get_method("rome")

    class Impostor(LuLafnEditor):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method(Impostor)
    assert issubclass(get_method("lu-lafns"), EditMethod)


def test_options_are_checked_before_a_model_is_loaded() -> None:
    check_method_options("lu-lafns", "qwen2-7b", {"beta": "0.2"})
    with pytest.raises(ConfigError, match="unknown preset"):
        check_method_options("lu-lafns", "nope", {})
    with pytest.raises(ConfigError, match="valid: layers, beta"):
        check_method_options("lu-lafns", None, {"betta": "0.2"})


def test_cli_methods_lists_every_method_and_its_keys() -> None:
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name in method_names():
        assert f"{name}: " in result.output
    assert "  beta (float; default 0.0): Eq. 5 threshold" in result.output
    # Every preset says how it was chosen; those never measured say so.
    assert "    qwen2-7b: layers 19,20,21,27, beta 0.0; the paper's" in result.output
    assert "    smollm2-135m: layers 18,19,20, beta 0.0; scaled" in result.output and "not measured" in result.output


def test_cli_unknown_set_key_fails_before_loading(tmp_path) -> None:
    args = ["eval", "--model", "no-such-model", "--data", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--set", "betta=1"])
    assert result.exit_code == 1
    assert "unknown hyperparameter 'betta'" in result.output and "loading" not in result.output
