"""``abaw features``: fill the visual and audio feature caches of a release, resumably.

Every subject of the index gets one row per frame of its frame axis (``n_frames``). Finished subjects are
skipped when what they were made from is unchanged (``abaw.features.inputs``: crop listing, video size and
mtime, frame axis) and they are not a fill for unreadable media, so a killed run resumes where it stopped; ``shard="I/N"`` gives this process the subjects of rank
``i % N == I`` (sorted names; audio shards by raw video, whose audio serves both ``_left``/``_right``), so
N machines can fill one cache. A subject that cannot be read (corrupt crop, undecodable audio) is
reported by name at the end while the others finish; the exit code is then non-zero. So is a subject the
index gives no frame axis (see ``abaw data``). The manifest is written only when every subject of the
index is cached for its current inputs, and removed as soon as that stops being true.

Where each config's caches are is recorded by this stage (``abaw.features.handoff``); ``feature_dir``
reads that record, so later stages never re-resolve a backbone.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abaw.config import Config, save_config, stable_hash
from abaw.features import handoff
from abaw.features.cache import MANIFEST, UNSEEN, CacheError, FeatureCache, fill_sources
from abaw.features.config import parse_shard
from abaw.features.inputs import audio_inputs, visual_inputs
from abaw.features.registry import EXTRACTOR_VERSION, digested_files, resolve_visual, visual_settings
from abaw.utils import atomic_write_json, code_version

log = logging.getLogger(__name__)

KINDS = ("visual", "audio")


# ---- where a cache lives ------------------------------------------------------------------------
def _audio_module():
    # Imported only when audio is asked for (it loads torchaudio); tests swap in a fake through here.
    import abaw.features.audio as audio

    return audio


def feature_settings(cfg: Config, kind: str) -> tuple[str, dict[str, Any]]:
    """(backbone name, settings that decide the features) for ``kind`` in {'visual', 'audio'}."""
    if kind == "visual":
        vcfg, rc = cfg.features.visual, cfg.release_cache
        return resolve_visual(vcfg, rc).name, visual_settings(vcfg, rc)
    if kind == "audio":
        acfg = cfg.features.audio
        settings = dict(_audio_module().audio_settings(acfg))
        settings.update(kind="audio", dtype=acfg.dtype, extractor_version=EXTRACTOR_VERSION)
        return acfg.preset, settings
    raise ValueError(f"feature kind {kind!r} is not one of {KINDS}")


def resolve_feature_dir(cfg: Config, kind: str) -> tuple[Path, dict[str, Any], list[str]]:
    """(``<release_cache>/features/<backbone>-<hash of the settings>``, the settings, the files whose
    digest went into them): resolves the backbone (imports timm, hashes weights files)."""
    with digested_files() as files:
        name, settings = feature_settings(cfg, kind)
    return cfg.release_cache / "features" / f"{name}-{stable_hash(settings)}", settings, files


def feature_dir(cfg: Config, kind: str) -> Path:
    """Where the ``kind`` features of this config are, as the features stage recorded it.

    Reads the stage's hand-off record (no backbone is resolved, no weights file hashed, so a weights file
    moved after extraction does not matter); a weights file re-made at the same path is noticed by its
    size and mtime. Raises ``FeaturesNotExtractedError`` when nothing was extracted for this config."""
    if kind not in KINDS:
        raise ValueError(f"feature kind {kind!r} is not one of {KINDS}")
    return handoff.lookup(cfg, kind, lambda: resolve_feature_dir(cfg, kind)[0])


# ---- what a run did -----------------------------------------------------------------------------
@dataclass
class ExtractReport:
    kind: str
    cache_dir: Path
    extracted: list[str] = field(default_factory=list)  # written by this run
    skipped: list[str] = field(default_factory=list)  # already finished (or finished by another writer)
    failed: dict[str, str] = field(default_factory=dict)  # subject -> reason
    warnings: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)  # cached as zeros for unreadable media (redone next run)
    frames: int = 0  # frames that went through the backbone in this run
    seconds: float = 0.0  # the whole call, model loading included
    loop_seconds: float = 0.0  # decoding + forward + writing only: what frames/s is measured over
    complete: bool = False  # the manifest exists: every subject of the release is cached
    shard: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        rate = (
            f" at {self.frames / self.loop_seconds:.0f} frames/s"
            if self.frames and self.loop_seconds > 0
            else ""
        )
        lines = [
            f"{self.kind} features -> {self.cache_dir}"
            + (f" (shard {self.shard})" if self.shard else "")
            + f": {len(self.extracted)} extracted, {len(self.skipped)} already done, {len(self.failed)} failed;"
            + f" {self.frames} frames{rate}, {self.seconds:.1f} s in all; "
            + ("cache complete" if self.complete else "cache not complete")
            + (
                f" ({len(self.filled)} subject(s) filled with zeros for unreadable media, retried on every run)"
                if self.filled
                else ""
            )
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  FAILED {s}: {why}" for s, why in sorted(self.failed.items())]
        return "\n".join(lines)


# ---- the subjects ---------------------------------------------------------------------------------
@dataclass
class Job:
    subject: str
    n_frames: int
    crop_dir: Path | None
    video: str  # raw video name: the audio grouping key
    video_path: Path | None
    row: int  # row in the index table (frame_times are read from there only when needed)
    has_audio: bool | None = None
    inputs: dict[str, Any] | None = None  # identity of what the features are made from (abaw.features.inputs)
    token: Any = UNSEEN  # the subject's cache record as this run first saw it (FeatureCache.record_token)


def _path_or_none(value: Any, root: Path) -> Path | None:
    if value is None or str(value) == "":
        return None
    p = Path(value)
    return p if p.is_absolute() else root / p


def _jobs(cfg: Config, table, report: ExtractReport) -> list[Job]:
    from abaw.data.release import source_video

    cols = set(table.columns)
    missing = {"subject", "n_frames"} - cols
    if missing:
        raise ValueError(f"index table lacks column(s) {sorted(missing)}")
    root = cfg.data_root
    jobs = []
    get = lambda name, i: table[name][i] if name in cols else None  # noqa: E731
    for i, subject in enumerate(table["subject"].to_list()):
        n = get("n_frames", i)
        if n is None or n < 0:
            # Never guessed: a wrong axis would overwrite good features with ones of another length.
            errors = get("errors", i)
            why = f": {'; '.join(errors)}" if errors is not None and len(errors) else ""
            report.failed[subject] = f"no frame axis in the index (see `abaw data`){why}; not extracted"
            continue
        jobs.append(
            Job(
                subject=subject,
                n_frames=int(n),
                crop_dir=_path_or_none(get("crop_dir", i), root),
                video=get("video", i) or source_video(subject),
                video_path=_path_or_none(get("video_path", i), root),
                row=i,
                has_audio=get("has_audio", i),
            )
        )
    names = [j.subject for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("index table lists a subject twice")
    return sorted(jobs, key=lambda j: j.subject)


def _in_shard(names: list[str], shard: tuple[int, int] | None) -> set[str]:
    if shard is None:
        return set(names)
    i, n = shard
    return {s for k, s in enumerate(sorted(names)) if k % n == i}


def crop_presence(crop_dir: Path | None, n_frames: int) -> tuple[np.ndarray, int]:
    """(bool [n_frames]: which frames have a crop file, count of misnamed crop files that are not read);
    the same listing as ``visual_inputs``, without the per-file stat its identity needs."""
    from abaw.data.crops import list_crops

    present = np.zeros(n_frames, bool)
    if crop_dir is None or not crop_dir.is_dir():
        return present, 0
    listing = list_crops(crop_dir, header=False)
    present[listing.frames[listing.frames < n_frames]] = True
    return present, listing.misnamed


def _plan(kind: str, cache: FeatureCache, table, job: Job) -> tuple[np.ndarray, int] | None:
    """Fill in ``job.inputs`` (and the record token); (crop presence, misnamed crops) for visual jobs."""
    job.token = cache.record_token(job.subject)
    if kind == "visual":
        job.inputs, present, misnamed = visual_inputs(job.crop_dir, job.n_frames)
        return present, misnamed
    job.inputs = audio_inputs(job.video_path, _frame_times(table, job), job.n_frames)
    return None


# ---- cache bookkeeping --------------------------------------------------------------------------
def _prepare_cache(cfg: Config, cache: FeatureCache, settings: dict[str, Any], jobs: list[Job]) -> None:
    """Create the folder with settings.json and config.yaml; drop a manifest the index no longer matches."""
    cache.path.mkdir(parents=True, exist_ok=True)
    with cache.lock("manifest"):
        # These files are only written under this lock, so any temp file of theirs is a killed run's.
        for name in ("manifest.json", "settings.json", "config.yaml"):
            for tmp in cache.path.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        stored = cache.settings
        expected = _json_roundtrip(settings)
        if stored is None:
            save_config(cfg, cache.path / "config.yaml")
            atomic_write_json(cache.path / "settings.json", expected)
        elif stored != expected:
            raise CacheError(
                f"{cache.path}/settings.json does not match this config's settings (same hash, different "
                "content: the folder was edited or written by other code); move it away and rerun"
            )
        manifest = cache.manifest
        if manifest is not None and manifest.get("subjects") != {j.subject: j.n_frames for j in jobs}:
            log.warning("%s: manifest does not match the current index; it will be rewritten", cache.path)
            (cache.path / "manifest.json").unlink(missing_ok=True)


def _json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _drop_manifest(cache: FeatureCache) -> None:
    with cache.lock("manifest"):
        (cache.path / MANIFEST).unlink(missing_ok=True)


def _finish_manifest(
    cache: FeatureCache, table, jobs: list[Job], kind: str, settings: dict[str, Any], report: ExtractReport
) -> bool:
    """Write manifest.json when every subject of the index is cached for its current inputs, else remove
    it: the answer is worked out now, never taken from an older manifest (whoever finishes last writes)."""
    with cache.lock("manifest"):
        complete = not report.failed
        filled = []
        for j in jobs if complete else []:
            if j.inputs is None:  # another shard's subject: its identity is checked here, once
                try:
                    _plan(kind, cache, table, j)
                except OSError:
                    complete = False
                    break
            if not cache.matches(j.subject, j.n_frames, j.inputs):
                complete = False
                break
            if (cache.record(j.subject) or {}).get("fill"):
                filled.append(j.subject)
        if not complete:
            (cache.path / MANIFEST).unlink(missing_ok=True)
            return False
        shapes = [cache.shape(j.subject) for j in jobs]
        dims = {s[1] for s in shapes}
        if len(dims) > 1:
            raise CacheError(f"{cache.path}: subjects of different widths {sorted(dims)}")
        import timm
        import torch

        cache.write_manifest(
            {
                "kind": kind,
                "dim": dims.pop() if dims else 0,
                "dtype": settings["dtype"],
                "subjects": {j.subject: j.n_frames for j in jobs},
                "filled": sorted(filled),
                "settings": _json_roundtrip(settings),
                "hash": cache.path.name.rsplit("-", 1)[-1],
                "extractor_version": EXTRACTOR_VERSION,
                "code_version": code_version(),
                "torch": torch.__version__,
                "timm": timm.__version__,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        report.filled = sorted(filled)
        return True


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", unit_scale=True, dynamic_ncols=True, mininterval=1.0)


# ---- visual -----------------------------------------------------------------------------------------
class _RangeBatches:
    """Batch sampler over precomputed contiguous [start, stop) ranges (no per-index Python lists kept)."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray):
        self.starts, self.stops = starts, stops

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        for a, b in zip(self.starts.tolist(), self.stops.tolist(), strict=True):
            yield list(range(a, b))


def _extract_visual(cfg: Config, jobs: list[Job], cache: FeatureCache, report: ExtractReport) -> None:
    from torch.utils.data import DataLoader

    from abaw.features.visual import VisualExtractor, _worker_init, resolve_device

    vcfg = cfg.features.visual
    pending, presence = [], []
    for j in jobs:
        try:
            present, odd = _plan("visual", cache, None, j)
        except OSError as e:  # an unreadable crop folder
            report.failed[j.subject] = f"crop folder {j.crop_dir} unreadable: {e}"
            continue
        if cache.settled(j.subject, j.n_frames, j.inputs):
            report.skipped.append(j.subject)
            continue
        pending.append(j)
        presence.append(present)
        if odd:
            report.warnings.append(
                f"{j.subject}: {odd} crop file(s) in {j.crop_dir} not named %05d.jpg; not read (frames missing)"
            )
    if not pending:
        return
    _drop_manifest(cache)  # from here on the cache is not complete until this run says so again
    ext = VisualExtractor(vcfg, resolve_device(cfg.features.device), release_cache=cfg.release_cache)
    if cache.dim not in (None, ext.dim):
        raise CacheError(f"{cache.path} holds features of width {cache.dim}, the backbone gives {ext.dim}")

    # One flat list of (subject, frame) over all pending subjects and one DataLoader for the whole run, so
    # workers keep decoding across subject boundaries. Batches never span two subjects.
    frames = [np.flatnonzero(p).astype(np.int32) for p in presence]
    counts = np.array([len(f) for f in frames], dtype=np.int64)
    ends = np.cumsum(counts)
    starts_of = ends - counts
    bstarts, bstops, bjob = [], [], []
    for k, (a, n) in enumerate(zip(starts_of.tolist(), counts.tolist(), strict=True)):
        s = np.arange(a, a + n, vcfg.batch_size)
        bstarts.append(s)
        bstops.append(np.minimum(s + vcfg.batch_size, a + n))
        bjob.append(np.full(len(s), k))
    bstarts, bstops, bjob = (
        np.concatenate(x) if x else np.zeros(0, np.int64) for x in (bstarts, bstops, bjob)
    )
    flat_subjects = np.repeat(np.arange(len(pending), dtype=np.int32), counts)
    flat_frames = np.concatenate(frames) if frames else np.zeros(0, np.int32)
    dirs = [str(j.crop_dir) if j.crop_dir else "" for j in pending]
    workers = vcfg.num_workers
    loader = DataLoader(
        ext.dataset(dirs, flat_subjects, flat_frames),
        batch_sampler=_RangeBatches(bstarts, bstops),
        num_workers=workers,
        pin_memory=ext.device.type == "cuda",
        prefetch_factor=vcfg.prefetch_factor if workers else None,
        worker_init_fn=_worker_init if workers else None,
    )

    def publish_empty(k: int) -> None:
        """A subject with no crop at all: zeros and an all-False mask."""
        job = pending[k]
        with cache.lock(job.subject):
            if cache.settled(job.subject, job.n_frames, job.inputs, ext.dim, job.token):
                report.skipped.append(job.subject)
                return
            cache.remove_stale_tmp(job.subject)
            where = job.crop_dir if job.crop_dir else "no crop folder in the index"
            with cache.writer(
                job.subject, job.n_frames, ext.dim, vcfg.dtype, job.inputs, fill=f"no face crops ({where})"
            ) as w:
                w.commit(np.zeros(job.n_frames, bool), np.full(job.n_frames, -1))
        report.warnings.append(f"{job.subject}: no face crops ({where}); features are zeros, mask all False")
        report.extracted.append(job.subject)

    for k in np.flatnonzero(counts == 0):
        publish_empty(int(k))

    bar = _progress(int(counts.sum()), f"visual {ext.spec.name}")
    t0 = time.perf_counter()
    current, state, stack, writer = -1, "", contextlib.ExitStack(), None

    def close() -> None:
        nonlocal stack, writer
        stack.close()
        stack, writer = contextlib.ExitStack(), None

    try:
        for k, a, b, (x, errors) in zip(
            bjob.tolist(), bstarts.tolist(), bstops.tolist(), loader, strict=True
        ):
            job = pending[k]
            if k != current:
                close()
                current = k
                stack.enter_context(cache.lock(job.subject))
                # Checked again under the lock: another process may have written it meanwhile.
                if cache.settled(job.subject, job.n_frames, job.inputs, ext.dim, job.token):
                    report.skipped.append(job.subject)
                    state = "skip"
                else:
                    cache.remove_stale_tmp(job.subject)
                    writer = stack.enter_context(
                        cache.writer(job.subject, job.n_frames, ext.dim, vcfg.dtype, job.inputs)
                    )
                    state = "open"
            if state != "open":
                bar.update(b - a)
                continue
            bad = [e for e in errors if e]
            try:
                if bad:
                    more = f" (and {len(bad) - 1} more crop(s) in this batch)" if len(bad) > 1 else ""
                    raise OSError(bad[0] + more)
                writer.write(flat_frames[a:b], ext.embed(x))
                report.frames += b - a
                if b == ends[k]:
                    writer.commit(presence[k], fill_sources(presence[k], vcfg.fill))
                    report.extracted.append(job.subject)
                    close()
                    state = "done"
            except (OSError, FloatingPointError) as e:
                report.failed[job.subject] = str(e)
                close()
                state = "failed"
            bar.update(b - a)
    finally:
        stack.__exit__(*sys.exc_info())
        bar.close()
        report.loop_seconds += time.perf_counter() - t0


# ---- audio ------------------------------------------------------------------------------------------
def _extract_audio(
    cfg: Config, table, jobs: list[Job], cache: FeatureCache, report: ExtractReport, device: str
) -> None:
    audio = _audio_module()
    acfg = cfg.features.audio
    by_video: dict[str, list[Job]] = {}
    for j in jobs:
        _plan("audio", cache, table, j)
        if cache.settled(j.subject, j.n_frames, j.inputs):
            report.skipped.append(j.subject)
        else:
            by_video.setdefault(j.video, []).append(j)
    todo = sorted(by_video.items())
    if not todo:
        return
    _drop_manifest(cache)  # from here on the cache is not complete until this run says so again
    ext = audio.AudioExtractor(acfg, device)
    if cache.dim not in (None, ext.dim):
        raise CacheError(f"{cache.path} holds features of width {cache.dim}, the backbone gives {ext.dim}")
    bar = _progress(sum(j.n_frames for _, group in todo for j in group), f"audio {acfg.preset}")
    t0 = time.perf_counter()
    try:
        for video, group in todo:
            video_path = group[0].video_path
            times = {j.subject: _frame_times(table, j) for j in group}
            fill = ""
            if video_path is None or not video_path.is_file() or any(t is None for t in times.values()):
                out = {
                    j.subject: (np.zeros((j.n_frames, ext.dim), np.float32), np.zeros(j.n_frames, bool))
                    for j in group
                }
                if video_path is None:
                    fill = "no raw video in the index"
                elif not video_path.is_file():
                    fill = f"raw video {video_path} not found"
                else:  # the index could not probe it (see `abaw data`), so there is no frame clock
                    fill = f"no frame timestamps in the index for {video_path} (unreadable video?)"
                report.warnings += [
                    f"{j.subject}: {fill}; audio features are zeros, mask all False" for j in group
                ]
            else:
                # Both sides of a two-person video share one pass over the union of their timestamps.
                union = np.unique(np.concatenate(list(times.values())))
                try:
                    feats, mask = ext.embed_video(video_path, union)
                except audio.AudioDecodeError as e:
                    for j in group:
                        report.failed[j.subject] = str(e)
                    bar.update(sum(j.n_frames for j in group))
                    continue
                if feats.shape != (len(union), ext.dim) or mask.shape != (len(union),):
                    raise RuntimeError(
                        f"AudioExtractor gave {feats.shape} / {mask.shape} for {len(union)} timestamps of {video_path}"
                    )
                if any(j.has_audio is False for j in group):
                    report.warnings.append(
                        f"{video}: raw video {video_path.name} has no audio stream; audio features of "
                        f"{', '.join(j.subject for j in group)} are zeros, mask all False"
                    )
                report.frames += len(union)
                rows = {s: np.searchsorted(union, t) for s, t in times.items()}
                out = {s: (feats[r], mask[r]) for s, r in rows.items()}
            for j in group:
                try:
                    written = cache.write_subject(
                        j.subject, *out[j.subject], acfg.dtype, inputs=j.inputs, fill=fill, planned=j.token
                    )
                    (report.extracted if written else report.skipped).append(j.subject)
                except FloatingPointError as e:
                    report.failed[j.subject] = str(e)
                bar.update(j.n_frames)
    finally:
        bar.close()
        report.loop_seconds += time.perf_counter() - t0


def _frame_times(table, job: Job) -> np.ndarray | None:
    if "frame_times" not in table.columns:
        return None
    value = table["frame_times"][job.row]
    if value is None:
        return None
    times = np.asarray(value.to_numpy(), dtype=np.float64)
    if len(times) != job.n_frames:
        raise ValueError(f"index: {job.subject} has {len(times)} frame_times for {job.n_frames} frames")
    return times


# ---- entry points ----------------------------------------------------------------------------------
def extract_features(cfg: Config, kind: str, shard: str | None = None, index=None) -> ExtractReport:
    """Fill the ``kind`` cache for the subjects of ``load_index(cfg)`` (or the given index table).

    Returns what was extracted, skipped and failed; the manifest is written when the cache is complete.
    """
    if kind not in KINDS:
        raise ValueError(f"feature kind {kind!r} is not one of {KINDS}")
    t0 = time.perf_counter()
    shard = shard or cfg.features.shard or None
    shard_t = parse_shard(shard) if shard else None
    path, settings, files = resolve_feature_dir(cfg, kind)
    cache = FeatureCache(path)
    report = ExtractReport(kind=kind, cache_dir=cache.path, shard=shard or "")
    if index is None:
        from abaw.data.index import load_index

        index = load_index(cfg).table
    jobs = _jobs(cfg, index, report)
    _prepare_cache(cfg, cache, settings, jobs)
    handoff.record(cfg, kind, cache.path, files)  # later stages find this cache through it

    if kind == "visual":
        mine = _in_shard([j.subject for j in jobs], shard_t)
        _extract_visual(cfg, [j for j in jobs if j.subject in mine], cache, report)
    else:
        from abaw.features.visual import resolve_device

        # By raw video name (the same on every machine), so both sides of a video land in one shard.
        videos = _in_shard(sorted({j.video for j in jobs}), shard_t)
        mine_jobs = [j for j in jobs if j.video in videos]
        _extract_audio(cfg, index, mine_jobs, cache, report, str(resolve_device(cfg.features.device)))

    report.complete = _finish_manifest(cache, index, jobs, kind, settings, report)
    report.seconds = time.perf_counter() - t0
    return report


def cli_features(cfg: Config, args) -> int:
    """``abaw features [--only visual|audio] [--shard I/N]``: 0 when every subject succeeded."""
    from abaw.errors import AbawError

    kinds = [args.only] if getattr(args, "only", None) else list(KINDS)
    shard = getattr(args, "shard", None) or cfg.features.shard or None
    status = 0
    for kind in kinds:
        try:
            report = extract_features(cfg, kind, shard=shard)
        except (AbawError, ValueError) as e:  # WeightsError and CacheError are AbawErrors
            print(f"abaw features ({kind}): {e}", file=sys.stderr)
            return 2
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr, flush=True)
        if not report.ok:
            status = 1
    return status
