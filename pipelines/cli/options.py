"""What several commands share on the command line: the output format, KEY=VALUE options, and
whether `-v` was given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from germline.pipelines.config import parse_assignment, yaml_value

FORMATS = click.Choice(["table", "json"])

format_option = click.option(
    "--format", "fmt", type=FORMATS, default="table", show_default=True, help="Output format."
)


def key_values(yaml_values: bool = False) -> Callable[[click.Context, click.Parameter, Any], dict]:
    """A click callback that reads a repeatable KEY=VALUE option into a dict (values read as
    YAML with `yaml_values`, so 4096 is an int and true a bool); a bad item is an InputError
    naming the option (one line, exit 2)."""

    def parse(_ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict:
        out: dict[str, Any] = {}
        for item in items:
            key, value = parse_assignment(item, param.opts[0])
            out[key] = yaml_value(value, param.opts[0]) if yaml_values else value
        return out

    return parse


def verbose(ctx: click.Context) -> bool:
    """Whether the root command got -v (or more)."""
    return ctx.find_root().params.get("verbose", 0) > 0
