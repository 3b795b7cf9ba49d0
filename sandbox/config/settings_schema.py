"""The schema of `sandbox.yaml`, used when the file is new or changed.

The pydantic models are derived from the dataclasses in `sandbox.settings` (names, types, defaults,
descriptions, checks), so a setting is declared in one place; pydantic adds the file:line errors,
unknown keys with a did-you-mean, and every problem reported at once.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from sandbox.config.cron import CronError, parse_cron
from sandbox.config.fields import fail
from sandbox.errors import ConfigError
from sandbox.settings import Schedule, Settings, build, entry_type, field_types


def _cron(value: str) -> str:
    try:
        parse_cron(value)
    except CronError as e:
        fail(str(e))
    return value


# checks that need the config layer (settings sit below it): (dataclass, field) -> check
EXTRA_CHECKS: dict[tuple[type, str], Any] = {(Schedule, "cron"): _cron}


def _entry_check(check: Any) -> Any:
    """A dataclass's `check_entry` (rules across its keys) as a pydantic model validator."""

    def run(model: BaseModel) -> BaseModel:
        check(model.model_dump())
        return model

    return model_validator(mode="after")(run)


def model_for(cls: type) -> type[BaseModel]:
    """A strict pydantic model (unknown keys forbidden) with the fields of the settings dataclass `cls`."""
    types = field_types(cls)
    spec: dict[str, Any] = {}
    for f in fields(cls):
        tp = types[f.name]
        nested = is_dataclass(tp) and isinstance(tp, type)
        item = entry_type(tp)
        if nested:
            tp = model_for(tp)
        elif item is not None:  # entries: a YAML list or mapping of them
            tp = tuple[model_for(item), ...] if get_origin(tp) is tuple else dict[str, model_for(item)]  # type: ignore[misc]
        if "check" in f.metadata:
            tp = Annotated[tp, AfterValidator(f.metadata["check"])]
        if (cls, f.name) in EXTRA_CHECKS:
            tp = Annotated[tp, AfterValidator(EXTRA_CHECKS[(cls, f.name)])]
        info: dict[str, Any] = {"description": f.metadata["description"]}
        if "pattern" in f.metadata:
            info["pattern"] = f.metadata["pattern"]
        if f.default is not MISSING:
            info["default"] = f.default
        elif f.default_factory is not MISSING:
            info["default_factory"] = tp if nested else f.default_factory
        spec[f.name] = (tp, Field(**info))
    config = ConfigDict(extra="forbid", frozen=True)
    validators = {"check_entry": _entry_check(cls.check_entry)} if hasattr(cls, "check_entry") else None
    model: type[BaseModel] = create_model(
        f"{cls.__name__}Model", __config__=config, __validators__=validators, **spec
    )
    model.__doc__ = cls.__doc__
    return model


SettingsModel = model_for(Settings)


def validate_settings(path: Path) -> Settings:
    """The checked settings of `path`; ConfigError with file:line otherwise."""
    if not path.read_text().strip():
        return Settings()  # an empty sandbox.yaml just marks the workspace
    from sandbox.config.validate import error_issue
    from sandbox.config.yamlmarks import holds_nothing, load_yaml

    if holds_nothing(path.read_text()):  # only comments: all defaults (bad YAML: load_yaml says where)
        return Settings()
    raw = load_yaml(path, "sandbox.yaml")
    try:
        checked = SettingsModel.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([error_issue(err, raw, SettingsModel) for err in e.errors()]) from e
    return build(Settings, checked.model_dump())
