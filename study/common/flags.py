"""CLI flags shared by every ``study`` command, generated from ``TrialConfig`` in one place.

``@trial_config_flags()`` adds one ``--flag`` per ``TrialConfig`` field to a typer command. The
command receives ``overrides``: only the flags the user actually gave, so that flags beside
``--config FILE`` override the file and everything else keeps its default.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lenet_core.config import FIELD_NAMES, TrialConfig, field_types, from_dict
from lenet_core.errors import ConfigError
from study.common.files import read_json, read_toml

PANEL = "Trial config (any TrialConfig field)"


def _flag_help(f: dataclasses.Field[Any]) -> str:
    text = f.metadata["help"]
    if f.metadata.get("choices"):
        text += f" One of: {', '.join(f.metadata['choices'])}."
    if f.default is not None:
        text += f" Default: {f.default}."
    return text


def trial_config_flags(*, exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a command taking ``overrides: dict`` with a flag per TrialConfig field."""
    types_ = field_types()
    names = [n for n in FIELD_NAMES if n not in exclude]
    fields = {f.name: f for f in dataclasses.fields(TrialConfig)}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func, eval_str=True)
        params = [p for p in own.parameters.values() if p.name != "overrides"]
        for name in names:
            option = typer.Option(
                "--" + name.replace("_", "-"),
                help=_flag_help(fields[name]),
                show_default=False,
                rich_help_panel=PANEL,
            )
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[types_[name] | None, option],
                )
            )

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            overrides = {n: kwargs.pop(n) for n in names}
            return func(**kwargs, overrides={k: v for k, v in overrides.items() if v is not None})

        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


ConfigFileOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Load a saved TrialConfig: a JSON file (best.json, result.json or a bare config) "
        "or TOML. Flags given beside it override it.",
    ),
]


def load_config_file(path: Path) -> dict[str, Any]:
    """The config values in ``path``: a bare config, or a result with a "config" entry."""
    if path.suffix == ".toml":
        values: Any = read_toml(path, what="config file")
    else:
        values = read_json(path, what="config file")
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} holds no config (expected a JSON object)")
    return values


def resolve_config(config_file: Path | None, overrides: dict[str, Any], **defaults: Any) -> TrialConfig:
    """Command defaults, then the file, then the flags given: the last one wins."""
    values: dict[str, Any] = dict(defaults)
    source = "flags"
    if config_file is not None:
        values.update(load_config_file(config_file))
        source = str(config_file)
    values.update(overrides)
    return from_dict(values, source=source)
