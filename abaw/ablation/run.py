"""``abaw ablate``: train every (variant, seed) on every complementarity level and tabulate.

Levels are synthetic releases of the same seed and scale that differ only in how much of each
modality is degraded (``synth.face_degraded`` / ``synth.voice_degraded``, drawn independently per
modality): the subjects, their emotions and the planted traps are the same, so the levels compare
like with like. ``clean`` is the configured release itself (the demo's). With ``--levels release``
the configured release is used as it is (a real one: its hidden test is scored only if it has
``ground_truth/Test_Set``).

Each cell is one ordinary training run (``train(cfg)``) in the level's ``runs/`` folder, named by
its variant, seed and config digest, so a rerun only trains what is missing; its hidden-test score
and test-set gate diagnostics are cached beside it (``ablation_test.json``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw.config import Config, save_config, stable_hash, with_overrides
from abaw.errors import AbawError
from abaw.utils import atomic_write_json, start_worker_process, thread_share

log = logging.getLogger(__name__)

LEVELS = {"clean": 0.0, "moderate": 0.2, "strong": 0.4}  # fraction of frames degraded, per modality
AS_CONFIGURED = "release"
DEFAULT_VARIANTS = ("concat", "rjca", "grjca", "grjca_hier", "xformer")
TEST_FILE = "ablation_test.json"


class AblationError(AbawError):
    """A variant, level or seed list the ablation cannot run."""


@dataclass(frozen=True)
class Variant:
    label: str
    variant: str
    overrides: tuple[str, ...] = ()


def parse_variant(spec: str) -> Variant:
    """``rjca``, or ``label=variant,key=value,...`` (e.g. ``paper=grjca_hier,model.gate_norm=false``)."""
    from abaw.models.config import VARIANTS

    head, *overrides = [p for p in spec.split(",") if p] or [""]
    label, _, variant = head.partition("=")
    variant = variant or label
    if variant not in VARIANTS:
        raise AblationError(f"ablation variant {spec!r}: {variant!r} is not one of {list(VARIANTS)}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise AblationError(f"ablation variant {spec!r}: overrides must be key=value, got {bad}")
    return Variant(label, variant, tuple(overrides))


def level_config(cfg: Config, level: str) -> tuple[Config, bool]:
    """(the config of one complementarity level, whether its release is generated here); see the
    module docstring. Levels of a given synthetic release (``data.root``) take its seed and scale."""
    if level == AS_CONFIGURED:
        return cfg, False
    if level not in LEVELS:
        raise AblationError(f"ablation level {level!r}: expected one of {[*LEVELS, AS_CONFIGURED]}")
    ov = []
    if cfg.data.root:
        meta = _synthetic_meta(cfg.data_root)
        if meta is None:
            raise AblationError(f"complementarity levels are synthetic releases; {cfg.data_root} is not one "
                                f"(use --levels {AS_CONFIGURED} to ablate on it as it is)")
        ov += [f"synth.seed={meta['seed']}", f"synth.scale={meta['scale']}"]
    frac = LEVELS[level]
    ov += [f"synth.face_degraded={frac}", f"synth.voice_degraded={frac}"]
    if frac > 0:
        base = cfg.release_name
        ov += [f"data.root={Path(cfg.cache_root).resolve() / f'{base}-{level}' / 'release'}",
               f"data.name={base}-{level}"]
    # The clean level of a given release is that release, used as it is.
    return with_overrides(cfg, ov), frac > 0 or not cfg.data.root


def _synthetic_meta(root: Path) -> dict | None:
    from abaw.synth.generate import MARKER

    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def prepare_level(cfg: Config, generate_release: bool) -> None:
    """Write the level's release (when it is generated here), index it, fine-tune the visual backbone on
    its training crops when the config asks for it (``features.visual.finetuned``, as ``make features``
    does; a finished fine-tuning is reused) and fill both feature caches; every step keeps what is
    already complete."""
    from abaw.data.index import load_index
    from abaw.features.extract import extract_features
    from abaw.features.registry import is_finetune_name

    if generate_release:
        from abaw.synth.generate import generate

        generate(cfg.data_root, seed=cfg.synth.seed, scale=cfg.synth.scale, degradation=cfg.synth.degradation())
    table = load_index(cfg).table
    if is_finetune_name(cfg.features.visual.finetuned):  # a path names one made elsewhere: used as it is
        from abaw.finetune.run import finetune

        finetune(cfg)
    for kind in ("visual", "audio"):
        report = extract_features(cfg, kind, index=table)
        if not report.ok:
            raise AblationError(f"features ({kind}) of {cfg.release_name} failed: {report.summary()}")


def cell_config(level_cfg: Config, variant: Variant, seed: int) -> Config:
    """One cell's run config, named ``ablate-<label>-s<seed>-<run identity>``: the run identity covers
    what changes training (model, train settings, seed, the feature caches and the data they were made
    from; ``abaw.training.runs``), so changed settings make a new run and unrelated ones (tuning, the
    fine-tuning of features the cell does not read) reuse it. Needs the level's features (prepared)."""
    from abaw.training.runs import feature_dirs, identity_hash

    cfg = with_overrides(level_cfg, [*variant.overrides, f"model.variant={variant.variant}", f"seed={seed}",
                                     "train.name="])
    ident = identity_hash(cfg, feature_dirs(cfg))
    return with_overrides(cfg, [f"train.name=ablate-{variant.label}-s{seed}-{ident}"])


def finished_cell(cfg: Config) -> dict | None:
    """The summary.json of a finished cell of this identity, else None (``--cached-only``)."""
    from abaw.training.runs import feature_dirs, identity_hash
    from abaw.training.train import completed_run, run_dir

    return completed_run(run_dir(cfg), identity_hash(cfg, feature_dirs(cfg)))


def train_cell(cfg: Config) -> dict:
    """Train one cell; ``train(cfg)`` returns a finished run of the same identity untrained (and resumes a
    killed one), so a rerun only fills what is missing."""
    from abaw.training.train import run_dir, train

    train(cfg)
    return json.loads((run_dir(cfg) / "summary.json").read_text())


def score_test(cfg: Config, run: Path) -> dict:
    """Hidden-test P_VA (raw and with the run's post-processing, clipped as a submission is) and the
    test-set gate diagnostics; cached in the run folder."""
    path = run / TEST_FILE
    # Keyed by the run it scores (its identity and best checkpoint) and the test settings it reads.
    key = stable_hash({"run": json.loads((run / "identity.json").read_text()).get("hash"),
                       "best": (run / "best.ckpt").stat().st_mtime_ns,
                       "eval": [cfg.train.eval_window_size, cfg.train.eval_hop_size, cfg.train.batch_size],
                       "report": 2})  # 2: the visual gates split by crop presence too
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("config_hash") == key:
            return data
    from abaw.data.annotations import read_annotations
    from abaw.metrics import PostprocessChoice, p_va
    from abaw.submit.predict import load_run
    from abaw.training.datamodule import SubjectSource
    from abaw.training.inference import predict_windows
    from abaw.training.report import degraded_frames, gate_report

    truth = cfg.data_root / "ground_truth" / "Test_Set"
    source = SubjectSource(cfg)
    names = [s for s in source.subjects_of_split("test") if (truth / f"{s}.txt").is_file()]
    result: dict = {"config_hash": key, "n_subjects": len(names)}
    if not names:
        result.update(p_va=float("nan"), p_va_post=float("nan"), gates={})
    else:
        model, _ = load_run(run)
        data = source.open(names, labels=False)
        tc = cfg.train
        st = predict_windows(model, data, tc.eval_window_size, tc.eval_hop_size, tc.batch_size)
        choice = PostprocessChoice.load(run / "postprocess.json")
        golds, masks = [], []
        for s in names:
            ann = read_annotations(truth / f"{s}.txt")
            golds.append(np.where(ann.valid[:, None], ann.values, 0.0))
            masks.append(np.asarray(ann.valid, bool))
        raw = [st.mean(s, "pred") for s in names]
        post = [np.clip(choice.apply(p), -1, 1) for p in raw]
        gold, mask = np.concatenate(golds), np.concatenate(masks)
        result["p_va"] = float(p_va(np.concatenate(raw), gold, mask)["p_va"])
        result["p_va_post"] = float(p_va(np.concatenate(post), gold, mask)["p_va"])
        report = gate_report(st, names, *degraded_frames(cfg.data_root, data, source.rows))
        result["gates"] = report.get("headline", {})
        result["degraded_fraction"] = report.get("degraded_fraction", {})
    atomic_write_json(path, result)
    return result


@dataclass(frozen=True)
class Cell:
    level: str
    label: str
    seed: int
    cfg: Config


def run_cell(cell: Cell, train_missing: bool = True) -> dict | None:
    """Train (or reuse) one cell and score it: its results row, or None when it is not trained and
    ``train_missing`` is off."""
    t0 = time.perf_counter()
    summary = train_cell(cell.cfg) if train_missing else finished_cell(cell.cfg)
    if summary is None:
        log.info("%s %s seed %s: not trained yet (left out)", cell.level, cell.label, cell.seed)
        return None
    test = score_test(cell.cfg, _run_dir(cell.cfg))
    row = {"level": cell.level, "variant": cell.label, "seed": cell.seed, "run": cell.cfg.train.name,
           "val_p_va": summary["metrics"].get("p_va_post", summary["metrics"]["p_va"]),
           "test_p_va": test["p_va_post"], "test_p_va_raw": test["p_va"],
           "fit_seconds": summary.get("fit_seconds"), "seconds": round(time.perf_counter() - t0, 1)}
    row.update({f"gate/{k}": v for k, v in test.get("gates", {}).items()})
    log.info("%s %s seed %s: val %.4f test %.4f (%.0f s)", cell.level, cell.label, cell.seed,
             row["val_p_va"], row["test_p_va"], row["seconds"])
    return row


def _cell_in_worker(level: str, label: str, seed: int, cfg_dict: dict) -> dict | None:
    from abaw.config import load_config

    return run_cell(Cell(level, label, seed, with_overrides(load_config(), cfg_dict)))


def _start_worker(n_threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start_worker_process(n_threads)


def run_cells(cells: Sequence[Cell], workers: int = 1, train_missing: bool = True) -> list[dict]:
    """The rows of ``cells``, in their order. With ``workers`` > 1 the cells to train are spread over
    that many spawned processes, each with its share of the cores: the demo's small models use two
    threads poorly, so two one-thread cells at once beat one two-thread cell (README: the ablation)."""
    if workers <= 1 or not train_missing or len(cells) < 2:
        rows = [run_cell(c, train_missing) for c in cells]
        return [r for r in rows if r is not None]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from abaw.config import to_dict

    threads = thread_share(workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_cell_in_worker, c.level, c.label, c.seed, to_dict(c.cfg)) for c in cells]
        try:
            for f in as_completed(futures):
                f.result()  # the first failure, as soon as it happens
        except BaseException:
            # Queued cells are dropped, running ones finish (their runs are kept); a rerun resumes.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        rows = [f.result() for f in futures]
    return [r for r in rows if r is not None]


def run_ablation(cfg: Config, variants: Sequence[str], seeds: Sequence[int], levels: Sequence[str],
                 out: Path, reference: str = "rjca", train_missing: bool = True, workers: int = 1) -> dict[str, Path]:
    """Every cell, then results.csv (one row per cell), table.md, gates.png and config.yaml in ``out``.
    ``train_missing=False`` tabulates the finished cells only (the table so far); ``workers``: cells
    trained at once (``run_cells``)."""
    from abaw.ablation.table import markdown, summarise
    from abaw.training.plots import plot_gate_shift

    specs = [parse_variant(v) for v in variants]
    labels = [v.label for v in specs]
    if len(set(labels)) != len(labels):
        raise AblationError(f"ablation variants {labels}: labels must be distinct")
    if not seeds:
        raise AblationError("ablation: no seeds")
    if workers < 1:
        raise AblationError(f"ablation: --workers {workers}: must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    cells, timing = [], {}
    for level in levels:
        lcfg, generated = level_config(cfg, level)
        t0 = time.perf_counter()
        if train_missing:
            prepare_level(lcfg, generated)
        timing[f"prepare/{level}"] = round(time.perf_counter() - t0, 1)
        cells += [Cell(level, spec.label, int(seed), cell_config(lcfg, spec, int(seed)))
                  for spec in specs for seed in seeds]
    t0 = time.perf_counter()
    rows = run_cells(cells, workers, train_missing)
    timing["cells"] = round(time.perf_counter() - t0, 1)
    timing["workers"] = workers
    timing.update({f"{r['level']}/{r['variant']}/{r['seed']}": r.pop("seconds") for r in rows})
    import polars as pl

    from abaw.training.report import write_csv

    table = summarise(rows, reference if reference in labels else labels[0])
    paths = {"results": write_csv(pl.from_dicts(rows, infer_schema_length=None), out / "results.csv"),
             "table_csv": write_csv(table, out / "table.csv")}
    text = markdown(table, reference)
    (out / "table.md").write_text(text)
    paths["table"] = out / "table.md"
    paths["gates_plot"] = plot_gate_shift(out / "gates.png", rows)
    atomic_write_json(out / "timing.json", timing)
    paths["timing"] = out / "timing.json"
    return paths


def _run_dir(cfg: Config) -> Path:
    from abaw.training.train import run_dir

    return run_dir(cfg)


def _seeds(spec: str | None, default: int = 5) -> list[int]:
    """``--seeds 5`` (seeds 0..4) or ``--seeds 0,3,7``."""
    if spec is None:
        return list(range(default))
    spec = str(spec)
    try:
        return list(range(int(spec))) if "," not in spec else [int(s) for s in spec.split(",") if s]
    except ValueError as e:
        raise AblationError(f"--seeds {spec!r}: expected a count (5) or a list (0,3,7)") from e


def cli_ablate(cfg: Config, args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    variants = args.variants or list(DEFAULT_VARIANTS)
    levels = args.levels or list(LEVELS)
    out = Path(args.out) if args.out else Path(cfg.cache_root).resolve() / "ablation" / (args.name or "ablation")
    t0 = time.perf_counter()
    paths = run_ablation(cfg, variants, _seeds(args.seeds), levels, out, args.reference,
                         train_missing=not args.cached_only, workers=args.workers)
    print(paths["table"].read_text())
    print(f"ablation: {out} ({time.perf_counter() - t0:.0f} s): " + ", ".join(p.name for p in paths.values()))
    return 0
