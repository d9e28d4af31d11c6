"""The features stage's hand-off: which cache folder holds the features of a config (contract C3).

``abaw features`` resolves the backbone (timm's preprocessing, the digest of every weights file) and names
its cache after the hash of the result. Later stages must not redo that: it imports timm, hashes files
of hundreds of MB, and breaks when a weights file has been moved although its features are cached. So
the stage writes, per config, ``<release_cache>/features/handoff/<kind>-<key>.json``::

    {"kind": "visual", "dir": "<cache folder name>", "config": {...}, "files": [{"path", "size", "mtime_ns"}]}

``key`` hashes the config section as written (minus the fields that change speed only), the extractor
versions and the timm version: everything that decides the cache *except the content of files*. The
files whose digest went into the settings (weights, a fine-tuned checkpoint) are recorded by size and
mtime. ``lookup`` trusts the record as long as each recorded file is either gone (moved after
extraction: the digest in the cache's settings still says what made the features) or unchanged; a file
re-made at the same path (size or mtime changed) is hashed again, and unless its content is the same,
the lookup refuses rather than serve features of the old file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from abaw.config import stable_hash
from abaw.errors import AbawError
from abaw.utils import atomic_write_json

FOLDER = "handoff"
# Fields that change how fast features are made, not what they are: a changed batch size between
# `abaw features` and `abaw train` still finds the cache.
SPEED_ONLY = {
    "visual": ("batch_size", "num_workers", "prefetch_factor", "channels_last"),
    "audio": ("batch_size",),
}


class FeaturesNotExtractedError(AbawError):
    """No cache of this kind was extracted for this config (or its weights changed since)."""


def _section(cfg, kind: str) -> dict[str, Any]:
    d = dataclasses.asdict(getattr(cfg.features, kind))
    for k in SPEED_ONLY[kind]:
        d.pop(k, None)
    if d.get("precision") == "32":  # as in the cache key: records written before the setting stay valid
        d.pop("precision")
    return d


def _key(cfg, kind: str) -> str:
    from abaw.features.registry import EXTRACTOR_VERSION

    versions: dict[str, Any] = {"extractor": EXTRACTOR_VERSION}
    if kind == "audio":
        from abaw.features.audio import AUDIO_EXTRACTOR_VERSION  # numpy and PyAV helpers only

        versions["audio_extractor"] = AUDIO_EXTRACTOR_VERSION
    else:  # timm's pretrained configs (hub ids, preprocessing) may change between its versions
        versions["timm"] = metadata.version("timm")
    return stable_hash({"kind": kind, "section": _section(cfg, kind), "versions": versions}, 16)


def record_path(cfg, kind: str) -> Path:
    return cfg.release_cache / "features" / FOLDER / f"{kind}-{_key(cfg, kind)}.json"


def _file_state(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": path, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _named_files(section: dict[str, Any]) -> set[str]:
    """Files the config section names directly (a weights path, a checkpoint): tracked even if whatever
    hashes them does not go through ``registry.weights_digest``."""
    out = set()
    for v in section.values():
        if isinstance(v, str) and v and os.path.isfile(os.path.expanduser(v)):
            out.add(str(Path(v).expanduser().resolve()))
    return out


def record(cfg, kind: str, cache_dir: Path, files: list[str]) -> None:
    """Write (or refresh) this config's hand-off record: ``cache_dir`` holds its ``kind`` features.
    ``files``: those whose digest went into the settings (``registry.digested_files``)."""
    section = _section(cfg, kind)
    rec = {
        "kind": kind,
        "dir": cache_dir.name,
        "config": section,
        "files": [_file_state(f) for f in sorted(set(files) | _named_files(section))],
    }
    path = record_path(cfg, kind)
    try:
        if json.loads(path.read_text()) == json.loads(json.dumps(rec, default=str)):
            return  # unchanged: several shards starting at once do not rewrite it
    except (OSError, ValueError):
        pass
    atomic_write_json(path, rec)


def lookup(cfg, kind: str, resolve: Callable[[], Path]) -> Path:
    """The cache folder the features stage recorded for this config; ``resolve()`` (the full, slow
    resolution) is called only when a recorded file was changed in place."""
    path = record_path(cfg, kind)
    hint = f"run `abaw features` (or `abaw features --only {kind}`) with this config first"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        raise FeaturesNotExtractedError(
            f"no {kind} features were extracted for this config (no record {path}); {hint}"
        ) from None
    folder = cfg.release_cache / "features" / rec["dir"]
    changed = []
    for f in rec.get("files", []):
        try:
            now = _file_state(f["path"])
        except FileNotFoundError:
            continue  # moved or deleted after extraction: the features are still what they were
        if now != f:
            changed.append(f["path"])
    if changed:
        if resolve() != folder:
            raise FeaturesNotExtractedError(
                f"{kind} features: {changed[0]} was re-made since the features in {folder} were extracted "
                f"from it (its content differs); {hint}"
            )
        # Same content (e.g. touched or copied back): remember the new size/mtime, so this hashing happens once.
        states = {f["path"]: f for f in rec["files"]}
        states.update({p: _file_state(p) for p in changed})
        atomic_write_json(path, {**rec, "files": [states[p] for p in sorted(states)]})
    if not (folder / "settings.json").is_file():
        raise FeaturesNotExtractedError(f"{kind} feature cache {folder} is gone; {hint}")
    return folder
