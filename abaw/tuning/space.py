"""The search space as data: read from configs/tune/*.yaml, checked against the run config, and turned
into Optuna suggestions that are plain ``key=value`` config overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abaw.config import Config, ConfigError, load_yaml, resolve_config_path, with_overrides


@dataclass
class Param:
    name: str  # dotted config path
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.name, self.choices)


@dataclass
class SearchSpace:
    path: Path
    params: list[Param]
    fixed: dict[str, Any]

    def suggest(self, trial) -> dict[str, Any]:
        """One trial's overrides: ``{dotted key: value}`` for every parameter, plus the fixed ones."""
        values = dict(self.fixed)
        values.update({p.name: p.suggest(trial) for p in self.params})
        return values


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def apply(cfg: Config, flat: dict[str, Any]) -> Config:
    return with_overrides(cfg, _nest(flat))


def load_space(path: str | Path, cfg: Config) -> SearchSpace:
    """Read and check a space file: unknown keys, bad bounds and types fail here, naming the file and
    parameter, before any trial runs."""
    p = resolve_config_path(path)
    data = load_yaml(p)
    unknown = set(data) - {"params", "fixed"}
    if unknown:
        raise ConfigError(f"{p}: unknown top-level key(s) {sorted(unknown)}; expected params, fixed")
    params = []
    for name, spec in (data.get("params") or {}).items():
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"{p}: parameter {name!r} needs a mapping with a 'type'")
        known = {f.name for f in dataclasses.fields(Param)} - {"name"}
        bad = set(spec) - known
        if bad:
            raise ConfigError(f"{p}: parameter {name!r} has unknown field(s) {sorted(bad)}")
        param = Param(name=name, **spec)
        if param.type in ("float", "int"):
            if param.low is None or param.high is None or not param.low < param.high:
                raise ConfigError(f"{p}: parameter {name!r} needs low < high, got {param.low}, {param.high}")
            if param.log and param.low <= 0:
                raise ConfigError(f"{p}: parameter {name!r} is log-scaled, so low must be > 0")
        elif param.type == "categorical":
            if not param.choices:
                raise ConfigError(f"{p}: categorical parameter {name!r} needs choices")
        else:
            raise ConfigError(f"{p}: parameter {name!r} has type {param.type!r}; use float, int or categorical")
        params.append(param)
    space = SearchSpace(path=p, params=params, fixed=dict(data.get("fixed") or {}))
    # Every key must be a real config field: try the lowest/first value of each against the schema.
    probe = dict(space.fixed)
    for param in params:
        probe[param.name] = param.choices[0] if param.type == "categorical" else (
            int(param.low) if param.type == "int" else float(param.low))
    try:
        apply(cfg, probe)
    except (ConfigError, ValueError, TypeError) as e:
        raise ConfigError(f"{p}: the space does not fit the run config: {e}") from e
    return space
