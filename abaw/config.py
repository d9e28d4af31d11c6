"""Typed run configuration: YAML files -> nested dataclasses, dotted command-line overrides, and the
resolved config written beside every artifact.

Each stage owns its section dataclass in its own package (``abaw/<stage>/config.py``, no heavy imports);
this module only composes them and knows how to load, override, hash and save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from abaw.data.config import DataConfig
from abaw.errors import AbawError
from abaw.features.config import FeaturesConfig
from abaw.finetune.config import FinetuneConfig
from abaw.metrics.config import PostprocessConfig
from abaw.models.config import ModelConfig
from abaw.submit.config import SubmitConfig
from abaw.synth.config import SynthConfig
from abaw.training.config import TrainConfig
from abaw.tuning.config import TuneConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError, AbawError):
    """A config file or override that does not fit the schema."""


@dataclass
class Config:
    seed: int = 0
    # Every output (index, features, runs, studies) lands under <cache_root>/<release name>/.
    # ABAW_CACHE moves it, like nanochat's cache root.
    cache_root: str = field(default_factory=lambda: os.environ.get("ABAW_CACHE", str(REPO_ROOT / "cache")))
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)

    # ---- derived locations -------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        """The release root: ``data.root`` or, when empty, the generated demo release."""
        if self.data.root:
            return Path(self.data.root).expanduser().resolve()
        return Path(self.cache_root).resolve() / "demo" / "release"

    @property
    def release_name(self) -> str:
        if self.data.name:
            return self.data.name
        return "demo" if not self.data.root else self.data_root.name

    @property
    def release_cache(self) -> Path:
        """``cache/<release>/``: index, features, runs and studies of one release."""
        return Path(self.cache_root).resolve() / self.release_name

    @property
    def index_path(self) -> Path:
        return self.release_cache / "index.parquet"


# ---- dataclass <-> plain dict ---------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML value into the annotated type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate()
    except ConfigError:
        raise
    except ValueError as e:  # a section's own checks name the value; add where it sits
        raise ConfigError(f"{where}: {e}") from e
    return obj


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """``train.lr=3e-4`` -> ``{"train": {"lr": 0.0003}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:  # e.g. "%.4f" reads as a YAML directive: take it as the plain string
        value = raw
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return node


def resolve_config_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    for cand in (p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config file {path} not found (looked in . and {CONFIG_DIR})")


def load_yaml(path: Path) -> dict:
    """Read one YAML config, following ``defaults: [other.yaml, ...]`` (merged first, in order)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    merged: dict = {}
    for parent in data.pop("defaults", []) or []:
        merged = _deep_merge(merged, load_yaml(resolve_config_path(path.parent / parent)))
    return _deep_merge(merged, data)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file (if any) <- ``key=value`` overrides, checked against the dataclasses."""
    data: dict = {}
    if path:
        data = load_yaml(resolve_config_path(path))
    for ov in overrides:
        data = _deep_merge(data, parse_override(ov))
    base = to_dict(Config())
    return from_dict(Config, _deep_merge(base, data))


def with_overrides(cfg: Config, overrides: list[str] | dict) -> Config:
    """A copy of ``cfg`` with overrides applied (dotted strings or a nested dict)."""
    data = to_dict(cfg)
    if isinstance(overrides, dict):
        data = _deep_merge(data, overrides)
    else:
        for ov in overrides:
            data = _deep_merge(data, parse_override(ov))
    return from_dict(Config, data)


def config_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config beside an artifact (atomically)."""
    from abaw.utils import atomic_write_text

    return atomic_write_text(Path(path), config_yaml(obj))


def stable_hash(obj: Any, n: int = 12) -> str:
    """A short, order-independent digest of a (dataclass) value, for cache keys."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
