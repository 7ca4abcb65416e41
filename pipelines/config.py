"""How every germline config is read: YAML in, a validated pydantic model out, errors that
name the file and the field.

Every command's config (generate, train, each experiment kind) is a `Strict` model: unknown
keys are refused and the whole file is validated before anything runs, so a typo costs a
second, not a half-written table. `--set KEY=VALUE` overrides are applied to the YAML before
validation, read as YAML values. Names that become lake paths are checked here too, for the
same reason: before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from germline.core import InputError
from germline.lineage.schema import check_name


class Strict(BaseModel):
    """The base of every config section: unknown keys refused, values frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=BaseModel)


def segment_name(name: str, what: str) -> str:
    """A lineage-safe name that is also one folder of the lake: ValueError (a config error
    naming the field) otherwise."""
    try:
        check_name(name)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    if "/" in name:
        raise ValueError(f"{what} name is one path segment: no '/'")
    return name


# Names that become one folder of the lake, checked when the config is read.
DatasetName = Annotated[str, AfterValidator(lambda name: segment_name(name, "a dataset"))]
ModelName = Annotated[str, AfterValidator(lambda name: segment_name(name, "a model"))]
ExperimentName = Annotated[str, AfterValidator(lambda name: segment_name(name, "an experiment"))]


def digest(content: Any) -> str:
    """The sha256 of `content` as sorted JSON: what names a run, a suite or an artifact by
    what decides it, so the same content always gets the same name."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def load_config(path: str | os.PathLike[str], kind: type[C], overrides: Sequence[str] = ()) -> C:
    """Read and validate a YAML config of `kind`, with `overrides` ("dotted.key=YAML value")
    applied first; InputError naming the file and field on any problem."""
    file = Path(path)
    return validate(read_config(file, overrides), kind, file)


def read_config(file: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config file as a mapping, with `overrides` applied (what `validate` then checks,
    and what a command reads first when the config's `kind` decides the model)."""
    raw = read_yaml(file)
    for override in overrides:
        apply_override(raw, override, file)
    return raw


def validate(raw: dict[str, Any], kind: type[C], file: Path) -> C:
    """`raw` as a `kind`; InputError naming the file, the first bad field and what it wants."""
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"{file}: {where}: {first['msg']}{more}") from None


def read_yaml(file: Path) -> dict[str, Any]:
    """The config file as a mapping; InputError if it cannot be read or is not one."""
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise InputError(f"cannot read config {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{file}: not valid YAML: {exc}") from None
    except RecursionError:
        raise InputError(f"{file}: nested too deeply to be a config") from None
    if not isinstance(raw, dict):
        raise InputError(f"{file}: expected a mapping of settings at the top level")
    return raw


def parse_assignment(item: str, what: str = "setting") -> tuple[str, str]:
    """`KEY=VALUE` as (key, value), the one parser of every such option (overrides, storage
    options, run parameters, engine options); InputError naming `what` otherwise."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"{what} {item!r}: expected KEY=VALUE")
    return key.strip(), value


def yaml_value(value: str, what: str) -> Any:
    """A value read as YAML, so `0`, `1e-3`, `true`, `[1, 2]` and `{kind: lora}` mean what they
    would in a config file."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise InputError(f"{what}: the value is not valid YAML: {exc}") from None


def apply_override(raw: dict[str, Any], override: str, file: Path) -> None:
    """Set `a.b.c=value` in `raw` (the value read as YAML); missing mappings are created."""
    key, value = parse_assignment(override, "override")
    parts = key.split(".")
    if not all(parts):
        raise InputError(f"override {override!r}: expected KEY=VALUE, as train.optim.lr=1e-3")
    parsed = yaml_value(value, f"override {override!r}")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"{file}: override {override!r}: {part} is not a mapping")
        node = child
    node[parts[-1]] = parsed
