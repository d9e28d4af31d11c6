"""Run identity: what a run folder is named after, and when an existing folder may be reused.

A run is named ``<readable>-<hash8>``: the readable part says what it is (variant, split, sanity
controls), the hash covers everything that changes what training produces -- the model section, the
train settings that matter, the post-processing search, the seed, the *names* of the feature caches
it reads (which themselves hash the extraction settings) and the *data*: what each cached subject was
extracted from (its input record) and the label files (size, mtime), so a regenerated or corrected
release never hands back a run trained on the old one. Settings that only change how or where it
runs (workers, devices, progress bar, resume, the name itself...) are left out, so the same run on
another machine, or resumed, lands in the same folder. ``identity.json`` in the folder records the
hash and what it covers; a folder of another identity is never continued or overwritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from abaw.config import Config, stable_hash, to_dict
from abaw.errors import AbawError
from abaw.utils import atomic_write_json

IDENTITY_FILE = "identity.json"
FEATURES_FILE = "features.json"
KINDS = ("visual", "audio")

# Train settings that change neither the weights nor the scores of a run (how/where it runs).
NOT_IDENTITY = frozenset({
    "name", "num_workers", "accelerator", "devices", "strategy", "deterministic", "resume",
    "log_every_n_steps", "plot_subjects", "progress_bar", "session_epochs",
})


class RunIdentityError(AbawError):
    """A run folder holds a run of another identity (or of unknown identity)."""


def feature_dirs(cfg: Config) -> dict[str, str]:
    """Where this config's feature caches are (through ``feature_dir``: what the features stage wrote)."""
    from abaw.features.extract import feature_dir

    return {kind: str(feature_dir(cfg, kind)) for kind in KINDS}


def identity(cfg: Config, dirs: dict[str, str]) -> dict:
    """Everything that changes what training produces (see the module docstring)."""
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in NOT_IDENTITY}
    return {
        "model": to_dict(cfg.model),
        "train": train,
        "postprocess": to_dict(cfg.postprocess),
        "seed": cfg.seed,
        "features": {kind: Path(d).name if d else "" for kind, d in sorted(dirs.items())},
        "data": data_identity(cfg, dirs),
    }


def data_identity(cfg: Config, dirs: dict[str, str]) -> dict[str, str]:
    """Digests of what the features were extracted from (every ``<subject>.inputs.json`` of each cache)
    and of the train/val label files (name, size, mtime, from the index). Cheap: small reads and stats."""
    out = {}
    for kind, d in sorted(dirs.items()):
        h = hashlib.sha256()
        for rec in sorted(Path(d).glob("*.inputs.json")) if d else []:
            h.update(rec.name.encode() + b"\0" + rec.read_bytes() + b"\0")
        out[kind] = h.hexdigest()[:16]
    index = cfg.index_path
    if index.is_file():
        import polars as pl

        h = hashlib.sha256()
        rows = pl.read_parquet(index, columns=["subject", "split", "label_file"])
        for subject, split, label in sorted(rows.filter(pl.col("split") != "test").iter_rows()):
            st = Path(label).stat() if label and Path(label).is_file() else None
            h.update(f"{subject}|{split}|{label}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        out["labels"] = h.hexdigest()[:16]
    return out


def identity_hash(cfg: Config, dirs: dict[str, str]) -> str:
    return stable_hash(identity(cfg, dirs), n=8)


def readable_name(cfg: Config) -> str:
    """``<variant>-fold<k>`` / ``<variant>-official``; sanity-control runs say so in the name, so they are
    never mistaken for a real run."""
    tc = cfg.train
    name = f"{cfg.model.variant}-fold{tc.fold}" if tc.folds else f"{cfg.model.variant}-official"
    if tc.shuffle_labels:
        name += "-shuffled-labels"
    if tc.audio_shift_s:
        name += f"-audio-shift{tc.audio_shift_s:+g}s"
    return name


def run_name(cfg: Config, dirs: dict[str, str] | None = None) -> str:
    """``train.name`` as given, else ``<readable>-<hash8>`` (``dirs``: the feature caches it reads;
    default: resolved from the config)."""
    if cfg.train.name:
        return cfg.train.name
    return f"{readable_name(cfg)}-{identity_hash(cfg, feature_dirs(cfg) if dirs is None else dirs)}"


def run_dir(cfg: Config, dirs: dict[str, str] | None = None) -> Path:
    return cfg.release_cache / "runs" / run_name(cfg, dirs)


def check_folder(out: Path, cfg: Config, dirs: dict[str, str]) -> str:
    """The identity hash of this config, after checking ``out`` holds nothing of another identity."""
    ident = identity_hash(cfg, dirs)
    path = out / IDENTITY_FILE
    if path.is_file():
        held = json.loads(path.read_text())
        if held.get("hash") != ident:
            diff = _differences(held.get("identity") or {}, identity(cfg, dirs))
            raise RunIdentityError(
                f"{out}: holds run {held.get('hash')}, but this config is run {ident} (differs in "
                f"{', '.join(diff[:6]) or 'unknown settings'}); choose another train.name, leave it "
                "empty for an automatic one, or delete the folder")
    elif out.is_dir() and any((out / n).exists() for n in ("best.ckpt", "last.ckpt", "summary.json")):
        raise RunIdentityError(f"{out}: holds a run without {IDENTITY_FILE} (made by an older version), so "
                               "it cannot be continued safely; delete the folder or choose another train.name")
    return ident


def write_identity(out: Path, cfg: Config, dirs: dict[str, str]) -> None:
    atomic_write_json(out / IDENTITY_FILE, {"hash": identity_hash(cfg, dirs), "identity": identity(cfg, dirs)})


def write_features_record(out: Path, dirs: dict[str, str]) -> Path:
    """features.json: each cache's absolute folder and its settings.json, so readers never re-resolve."""
    record = {}
    for kind in KINDS:
        d = dirs.get(kind) or ""
        settings_path = Path(d) / "settings.json" if d else None
        settings = json.loads(settings_path.read_text()) if settings_path and settings_path.is_file() else {}
        record[kind] = {"dir": str(Path(d).resolve()) if d else "", "settings": settings}
    return atomic_write_json(out / FEATURES_FILE, record)


def read_features_record(run: Path) -> dict | None:
    path = Path(run) / FEATURES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out
