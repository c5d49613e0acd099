"""Sweep expressions in Hydra's override grammar, mapped to Optuna distributions.

A sweep file lists `key: expression` pairs. Expressions are parsed by Hydra's own override parser:

    choice(a, b, ...)          -> CategoricalDistribution
    range(start, stop[, step]) -> IntDistribution / stepped FloatDistribution; stop excluded, as in Hydra
    interval(low, high)        -> FloatDistribution(low, high)
    int(interval(low, high))   -> IntDistribution(low, high), both bounds included
    tag(log, interval(...))    -> the same with log=True

Anything else (a plain value) is a fixed override applied to every trial. A key without a dot that
names a config group (`loss: choice(ce, focal)`) selects the group option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from imbalance_sweep.config import CONFIG_GROUPS
from imbalance_sweep.errors import ConfigError

_PLAIN_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")
_RESERVED_WORDS = {"true", "false", "null", "nan", "inf"}


@dataclass(frozen=True)
class SearchParameter:
    """One searched key: its Hydra override key, Optuna distribution and whether it selects a group."""

    key: str
    distribution: BaseDistribution
    expression: str

    @property
    def is_group(self) -> bool:
        return self.key in CONFIG_GROUPS


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[SearchParameter, ...]
    fixed_overrides: tuple[str, ...]

    def describe(self) -> dict[str, str]:
        return {p.key: p.expression for p in self.parameters}


def parse_search_space(params: Mapping[str, Any]) -> SearchSpace:
    """Parse a sweep file's `params` mapping; raise `ConfigError` on an invalid expression."""
    parser = OverridesParser.create()
    parameters, fixed = [], []
    for key, expression in params.items():
        text = f"{key}={_format_raw(expression)}"
        try:
            override = parser.parse_overrides([text])[0]
        except HydraException as error:
            raise ConfigError(f"invalid sweep expression {text!r} ({_first_line(error)}): see Hydra's override grammar") from None
        if override.is_sweep_override():
            parameters.append(SearchParameter(str(key), to_distribution(str(key), override.value()), str(expression)))
        else:
            fixed.append(text)
    # Group choices first: whether a key such as `loss.gamma` exists depends on the chosen group option.
    parameters.sort(key=lambda p: not p.is_group)
    return SearchSpace(tuple(parameters), tuple(fixed))


def to_distribution(key: str, sweep: Any) -> BaseDistribution:
    """Map one parsed Hydra sweep (choice, range or interval) to an Optuna distribution."""
    if isinstance(sweep, ChoiceSweep):
        choices = tuple(sweep.list)
        if any(isinstance(c, (list, dict)) for c in choices):
            raise ConfigError(f"{key}: choice() of lists or dicts is not supported: list plain values")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        return _range_distribution(key, sweep)
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        try:
            if isinstance(sweep.start, int) and isinstance(sweep.end, int):
                return IntDistribution(sweep.start, sweep.end, log=log)
            return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
        except ValueError as error:  # e.g. a log scale that starts at 0, or low > high
            raise ConfigError(f"{key}: invalid interval({sweep.start}, {sweep.end}) ({error}): fix the bounds") from None
    raise ConfigError(f"{key}: {type(sweep).__name__} is not supported in sweeps: use choice, range or interval")


def _range_distribution(key: str, sweep: RangeSweep) -> BaseDistribution:
    """Hydra's range(start, stop, step) stops before `stop`; Optuna's bounds are inclusive."""
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if step == 0:
        raise ConfigError(f"{key}: range step is 0: use a non-zero step")
    if all(isinstance(v, int) for v in (start, stop, step)):
        count = len(range(start, stop, step))
        if count == 0:
            raise ConfigError(f"{key}: range({start}, {stop}, {step}) is empty: stop must lie beyond start")
        last = start + (count - 1) * step
        return IntDistribution(min(start, last), max(start, last), step=abs(step))
    # Decimal arithmetic keeps range(0.1, 0.5, 0.1) at exactly 0.1 .. 0.4 instead of 0.30000000000000004.
    d_start, d_stop, d_step = (Decimal(str(v)) for v in (start, stop, step))
    count = max(0, math.ceil((d_stop - d_start) / d_step))
    if count == 0:
        raise ConfigError(f"{key}: range({start}, {stop}, {step}) is empty: stop must lie beyond start")
    last = d_start + (count - 1) * d_step
    low, high = sorted((float(d_start), float(last)))
    return FloatDistribution(low, high, step=float(abs(d_step)))


def suggest(trial: optuna.Trial, parameter: SearchParameter) -> Any:
    """Ask the trial for a value of one parameter."""
    distribution = parameter.distribution
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(parameter.key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(parameter.key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(parameter.key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def override_for(key: str, value: Any) -> str:
    """Write `key=value` in Hydra's override grammar, quoting strings that would parse as something else."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    text = str(value)
    if _PLAIN_STRING.fullmatch(text) and text.lower() not in _RESERVED_WORDS:
        return f"{key}={text}"
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{escaped}'"


def _format_raw(expression: Any) -> str:
    if isinstance(expression, bool):
        return str(expression).lower()
    if expression is None:
        return "null"
    return str(expression)


def _first_line(error: Exception) -> str:
    """Return Hydra's reason for a parse error: the line after "Error parsing override ...", if any."""
    lines = [line for line in str(error).strip().splitlines() if line and not line.startswith("See https")]
    if not lines:
        return type(error).__name__
    return lines[1] if len(lines) > 1 else lines[0]
