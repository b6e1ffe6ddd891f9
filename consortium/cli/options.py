"""Command-line options generated from a settings model (consortium/learning/settings.py).

`@setting_options(TrainOptions)` turns a command's `options: TrainOptions` parameter into
one option per field, in its place: `--field-name`, the field's type, default,
description (as help) and range. The command receives the validated model; a bad value
exits with one line naming the option, before the command runs. A field added to the
settings is an option at once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_origin

import click
import typer

from consortium.cli.common import run
from consortium.learning.settings import SettingsModel, config_key

S = TypeVar("S", bound=SettingsModel)
R = TypeVar("R")


def option_name(field: str) -> str:
    """A field's command-line option: `--learning-rate`."""
    return "--" + config_key(field)


def setting_options(
    model: type[S],
    *,
    only: Sequence[str] = (),
    defaults: Mapping[str, object] | None = None,
    parameter: str = "options",
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Replaces the command's parameter `parameter` (of type `model`) by an option per
    field of `model` (or per field in `only`, the others keeping their defaults).
    `defaults` replaces the model's defaults for this command (a benchmark's setup)."""
    base = model.parse(defaults or {}, option_name)
    names = list(only) or list(model.model_fields)
    schema: dict[str, dict[str, Any]] = model.model_json_schema()["properties"]
    options = [_option(model, n, getattr(base, n), schema[n]) for n in names]

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(command, eval_str=True)
        if parameter not in own.parameters:
            raise TypeError(f"{command.__name__} has no parameter {parameter!r}")
        params: list[inspect.Parameter] = []
        for p in own.parameters.values():
            if p.name == parameter:
                params += options
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> R:
            values = {**base.model_dump(), **{n: kwargs.pop(n) for n in names}}
            kwargs[parameter] = run(lambda: model.parse(values, option_name))
            return command(**kwargs)

        # Typer reads the command's parameters from its signature and annotations.
        with_options.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in params}
        return with_options

    return decorate


def _option(
    model: type[SettingsModel], name: str, default: object, prop: dict[str, Any]
) -> inspect.Parameter:
    annotation = model.model_fields[name].annotation
    kind = str if get_origin(annotation) is Literal else annotation
    if kind not in (int, float, str):
        raise TypeError(f"{model.__name__}.{name}: no command-line option for {annotation}")
    option = typer.Option(
        default, option_name(name), help=prop.get("description"), click_type=_range(kind, prop)
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)


def _range(kind: object, prop: dict[str, Any]) -> click.ParamType[Any] | None:
    """The field's range as click's (open at a strict bound); None without bounds."""
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    if low is None and high is None:
        return None
    bounds: dict[str, Any] = {
        "min": low,
        "max": high,
        "min_open": "exclusiveMinimum" in prop,
        "max_open": "exclusiveMaximum" in prop,
    }
    return click.IntRange(**bounds) if kind is int else click.FloatRange(**bounds)
