"""Checks of command-line overrides that run before Hydra, so mistakes get one line with the fix.

Hydra rejects an unknown group option or key too, but with a multi-line message, and for a key it
suggests `+key=value`, which adds the misspelled key and silently keeps the default.
"""

from __future__ import annotations

import difflib
import sys
from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from imbalance_sweep.config import CONF_DIR, group_folders, has_key
from imbalance_sweep.errors import ConfigError

@contextmanager
def exit_on_config_error():
    """Print a `ConfigError` as one line without a traceback and exit with status 2."""
    try:
        yield
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def raise_keyboard_interrupt(signum, frame) -> None:
    """Signal handler that turns SIGTERM into the same clean stop as Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


def check_command_line(arguments: list[str], config_name: str, sweep_file_errors: dict[str, str] | None = None) -> None:
    """Raise `ConfigError` for an unknown group option or an unknown key among the overrides."""
    overrides = _parse(arguments)
    folders = group_folders()
    choices: dict[str, list] = {}
    for override in overrides:
        folder = folders.get(override.key_or_group)
        if folder is None:
            continue
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in values:
            if isinstance(option, str) and option not in options:
                raise ConfigError(f"unknown {override.key_or_group} {option!r}: use one of {', '.join(options)}")
            if override.key_or_group == "sweep" and sweep_file_errors and option in sweep_file_errors:
                raise ConfigError(sweep_file_errors[option])
        choices[override.key_or_group] = values
    if config_name == "study" and "sweep" not in choices and sweep_file_errors and "default" in sweep_file_errors:
        raise ConfigError(sweep_file_errors["default"])

    keys = [o for o in overrides if o.key_or_group not in folders and not o.key_or_group.startswith("hydra")]
    if not keys:
        return
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        for override in keys:
            _check_key(override.key_or_group, config_name, choices)


def _parse(arguments: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    overrides = []
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue  # Hydra's own flags (-m, --cfg job, ...)
        try:
            override = parser.parse_override(argument)
        except HydraException:
            continue  # Hydra reports grammar errors itself
        if override.is_add() or override.is_force_add() or override.is_delete():
            continue  # `+key`, `++key` and `~key` mark a key as new or removed on purpose
        overrides.append(override)
    return overrides


def _check_key(key: str, config_name: str, choices: dict[str, list]) -> None:
    """Compose the config for every option given for the key's group and require the key in each."""
    group = key.split(".")[0]
    fixed = [f"{g}={values[0]}" for g, values in choices.items() if g != group and isinstance(values[0], str)]
    for option in choices.get(group, [None]):
        overrides = fixed + ([f"{group}={option}"] if isinstance(option, str) else [])
        try:
            cfg = compose(config_name=config_name, overrides=overrides)
        except HydraException:
            return  # Hydra reports composition errors itself
        if not has_key(cfg, key):
            where = f" in {group}={option}" if isinstance(option, str) else ""
            raise ConfigError(f"unknown key {key}{where}: {_suggestion(cfg, key)}")


def _suggestion(cfg: DictConfig, key: str) -> str:
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        return f"{parent_key} has no keys; check the spelling"
    close = difflib.get_close_matches(name, [str(k) for k in parent.keys()], n=1)
    if close:
        return f"did you mean {parent_key + '.' if parent_key else ''}{close[0]}?"
    return f"valid keys are {', '.join(str(k) for k in parent.keys())}"
