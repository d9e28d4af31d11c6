"""``finetune(cfg) -> (metrics, artifacts)``: fine-tune the visual backbone, export it for ``features``.

The folder ``<release cache>/finetune/<name>/`` (``features.visual.finetuned``) holds identity.json (what
made it), config.yaml, split.json, best.ckpt / last.ckpt, metrics.csv, val_plot.png, the fine-tuned
backbone's state dict ``backbone.pth`` with its record ``backbone.json``, and summary.json, written last:
it marks the fine-tuning complete. A complete folder of the same identity is reused, an unfinished one
is resumed from last.ckpt, and a folder of another identity is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from abaw.config import Config, save_config, stable_hash, to_dict
from abaw.errors import AbawError
from abaw.features.registry import (
    FINETUNED_RECORD,
    FINETUNED_WEIGHTS,
    finetuned_dir,
    resolve_visual,
    visual_settings,
)
from abaw.utils import atomic_path, atomic_write_json, code_version, file_digest

log = logging.getLogger(__name__)

# Settings that change speed or bookkeeping, not the fine-tuned weights: left out of the identity.
_NOT_IDENTITY = ("num_workers", "precision", "accelerator", "progress_bar", "resume", "plot_subjects")
# Extraction-only settings of features.visual (they do not change what is trained).
_EXTRACTION_ONLY = ("tta_flip", "fill", "dtype", "kind", "precision")


class FinetuneError(AbawError):
    """A fine-tuning that cannot run as configured (no name, a folder of another identity, no frames)."""


def base_backbone(cfg: Config):
    """``features.visual`` as the fine-tuning starts from it: its weights, at the fine-tuning's size."""
    ft = cfg.finetune
    vcfg = cfg.features.visual
    return dataclasses.replace(vcfg, finetuned="", img_size=ft.img_size or vcfg.img_size)


def output_dir(cfg: Config) -> Path:
    out = finetuned_dir(cfg.features.visual, cfg.release_cache)
    if out is None:
        raise FinetuneError("features.visual.finetuned is empty: name the fine-tuning to write "
                            "(e.g. features.visual.finetuned=faces), which `features` then extracts from")
    return out


def _release_facts(cfg: Config, rows: dict[str, dict], names: list[str]) -> dict:
    """What identifies the data: frame counts of the split's subjects, and a synthetic release's generator
    settings (ground_truth/traps.json), so a regenerated release never reuses a stale fine-tuning."""
    facts: dict = {"frames": {n: int(rows[n]["n_frames"]) for n in names},
                   "valid": {n: int(rows[n].get("valid_labels") or 0) for n in names}}
    marker = cfg.data_root / "ground_truth" / "traps.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        facts["generator"] = {k: meta.get(k) for k in ("seed", "scale", "version", "face_cues")}
    return facts


def identity(cfg: Config, split, rows: dict[str, dict]) -> dict:
    """Everything that changes the fine-tuned weights (hashed into identity.json)."""
    ft = {k: v for k, v in to_dict(cfg.finetune).items() if k not in _NOT_IDENTITY}
    backbone = {k: v for k, v in visual_settings(base_backbone(cfg)).items() if k not in _EXTRACTION_ONLY}
    return {
        "finetune": ft,
        "backbone": backbone,
        "split": {"mode": split.mode, "folds": split.folds, "fold": split.fold, "seed": split.seed,
                  "train": list(split.train), "val": list(split.val)},
        "release": _release_facts(cfg, rows, list(split.train) + list(split.val)),
        "seed": cfg.seed,
    }


def _check_identity(out: Path, ident: dict) -> None:
    path = out / "identity.json"
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    if stored.get("hash") == stable_hash(ident):
        return
    differ = sorted(k for k in set(ident) | set(stored.get("identity", {}))
                    if stored.get("identity", {}).get(k) != json.loads(json.dumps(ident.get(k))))
    raise FinetuneError(
        f"{out} holds a fine-tuning of other settings (differs in: {', '.join(differ) or 'format'}); "
        "choose another features.visual.finetuned name, or delete that folder to redo it"
    )


def _completed(out: Path, ident_hash: str) -> dict | None:
    summary = out / "summary.json"
    if not summary.is_file() or not (out / FINETUNED_RECORD).is_file():
        return None
    data = json.loads(summary.read_text())
    return data if data.get("identity_hash") == ident_hash else None


def artifact_paths(out: Path) -> dict[str, Path]:
    names = {"weights": FINETUNED_WEIGHTS, "record": FINETUNED_RECORD, "best": "best.ckpt",
             "last": "last.ckpt", "config": "config.yaml", "metrics": "metrics.csv", "plot": "val_plot.png",
             "summary": "summary.json", "identity": "identity.json", "split": "split.json"}
    return {k: out / v for k, v in names.items() if (out / v).exists()}


def prepare(cfg: Config):
    """(split, index rows, train table, val table, backbone spec) of this config."""
    from abaw.data.index import load_index
    from abaw.finetune.data import frame_table
    from abaw.training.folds import make_split

    table = load_index(cfg).table
    rows = {r["subject"]: r for r in table.iter_rows(named=True)}
    tc = cfg.train
    try:
        split = make_split(table, tc.folds, tc.fold, tc.fold_seed)
    except ValueError as e:
        raise FinetuneError(f"finetune: {e}") from e
    train = frame_table(rows, split.train, cfg.data_root, cfg.finetune.stride)
    val = frame_table(rows, split.val, cfg.data_root, cfg.finetune.val_stride)
    if len(train) < 2 or len(val) < 2:
        raise FinetuneError(f"finetune: {len(train)} training and {len(val)} validation frames have both a "
                            "label and a crop; fine-tuning needs at least 2 of each")
    if cfg.finetune.shuffle_labels:
        # Control: labels permuted over all training frames, so no crop keeps its own label.
        train.labels = train.labels[np.random.default_rng([cfg.seed, 7]).permutation(len(train))]
    return split, rows, train, val, resolve_visual(base_backbone(cfg))


def finetune(cfg: Config, callbacks=()) -> tuple[dict, dict[str, Path]]:
    """Fine-tune (or resume, or reuse) the fine-tuning ``features.visual.finetuned`` names."""
    import pytorch_lightning as pl
    import torch

    from abaw.features.visual import load_backbone
    from abaw.finetune.data import FinetuneData
    from abaw.finetune.module import FinetuneModule, FinetuneNet
    from abaw.training.callbacks import EpochLine, loggers
    from abaw.training.train import FlushLoggers, _resume_step, resolve_precision

    ft = cfg.finetune
    out = output_dir(cfg)
    split, rows, train_t, val_t, spec = prepare(cfg)
    ident = identity(cfg, split, rows)
    ident_hash = stable_hash(ident)
    _check_identity(out, ident)
    if (done := _completed(out, ident_hash)) is not None:
        log.info("fine-tuning %s is complete for this config; not retraining", out)
        return done["metrics"], artifact_paths(out)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "identity.json", {"hash": ident_hash, "identity": ident})
    save_config(cfg, out / "config.yaml")
    split.save(out / "split.json")

    pl.seed_everything(cfg.seed, workers=True)
    dm = FinetuneData(train_t, val_t, ft, spec.input_size, spec.mean, spec.std, spec.interpolation,
                      ft.samples_per_epoch, cfg.seed)
    net = FinetuneNet(load_backbone(spec), ft.dropout)
    if ft.channels_last:
        net = net.to(memory_format=torch.channels_last)
    lit = FinetuneModule(net, ft, channels_last=ft.channels_last, mean=dm.mean, std=dm.std)
    monitor = f"val/{ft.monitor}"
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=out, filename="best", monitor=monitor, mode="max", save_top_k=1, save_last=True,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    precision = resolve_precision(ft.precision, ft.accelerator)
    if precision.startswith("bf16"):
        from abaw.utils import warn_if_bf16_emulated

        on_gpu = ft.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        warn_if_bf16_emulated(f"finetune.precision={precision}", "cuda" if on_gpu else "cpu",
                              "finetune.precision=32-true")
    last = out / "last.ckpt"
    resume_from = last if ft.resume and last.is_file() else None
    # Lightning's CSVLogger writes metrics.csv (rows up to the checkpoint kept on resume), like training.
    trainer = pl.Trainer(
        accelerator=ft.accelerator, devices=1, precision=precision,
        max_epochs=ft.max_epochs, gradient_clip_val=ft.grad_clip or None,
        callbacks=[ckpt, FlushLoggers(), EpochLine(), *callbacks],
        logger=loggers(out, _resume_step(resume_from) if resume_from else None),
        default_root_dir=out, enable_progress_bar=ft.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=10,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.fit(lit, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
    fit_s = time.perf_counter() - t0
    if trainer.interrupted:
        raise FinetuneError(f"fine-tuning {out} was interrupted; run again to resume from last.ckpt")
    best_path = Path(ckpt.best_model_path or "")
    if not best_path.is_file():
        raise FinetuneError(f"{out}: no best.ckpt was written ({monitor} never finite?); see metrics.csv")
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    lit.load_state_dict(best["state_dict"])
    device = trainer.strategy.root_device
    lit.to(device).eval()
    pred, gold, pos = _predict(lit, dm.val_dataloader(), device)
    lit.cpu()
    metrics = _score(pred, gold)
    metrics.update(best_epoch=int(best["epoch"]), epochs=int(trainer.current_epoch))
    _plot(out / "val_plot.png", val_t, pred, gold, pos, ft.plot_subjects)
    _export(out, lit.net.backbone, spec, ident_hash, metrics,
            {"mode": split.mode, "folds": split.folds, "fold": split.fold, "seed": split.seed})
    summary = {
        "finetune": out.name, "metrics": metrics, "identity_hash": ident_hash,
        "resumed_from": str(resume_from) if resume_from else None,
        "split": {"mode": split.mode, "fold": split.fold, "folds": split.folds,
                  "n_train_subjects": len(train_t.names), "n_val_subjects": len(val_t.names)},
        "frames": {"train_pool": len(train_t), "per_epoch": len(dm.sampler), "val": len(val_t)},
        "backbone": {"model": spec.model, "input_size": list(spec.input_size), "init_weights": spec.weights_id},
        "controls": {"shuffle_labels": ft.shuffle_labels},
        "precision": str(trainer.precision), "accelerator": type(trainer.accelerator).__name__,
        "fit_seconds": round(fit_s, 2), "code_version": code_version(),
    }
    atomic_write_json(out / "summary.json", summary)
    return metrics, artifact_paths(out)


def _predict(lit, loader, device):
    """(pred, gold, table positions) of the (best) network on every frame of ``loader``, in fp32."""
    import torch

    parts = []
    with torch.inference_mode():
        for x, y, g in loader:
            parts.append((lit(x.to(device)).float().cpu().numpy(), y.numpy(), g.numpy()))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def _score(pred: np.ndarray, gold: np.ndarray) -> dict:
    from abaw.metrics import p_va

    ok = np.isfinite(gold).all(axis=1)
    s = p_va(pred, np.nan_to_num(gold), ok)
    return {k: float(s[k]) for k in ("p_va", "ccc_v", "ccc_a")}


def _plot(path: Path, table, pred, gold, pos, n: int) -> None:
    """Frame-level prediction vs label of a few validation subjects (their sampled frames, in order)."""
    from abaw.training.plots import plot_validation

    subs = table.subjects[pos]
    chosen = [s for s in dict.fromkeys(subs.tolist())][: max(0, n)]
    items = []
    for s in chosen:
        sel = np.flatnonzero(subs == s)
        sel = sel[np.argsort(table.frames[pos[sel]])]
        g = gold[sel]
        items.append({"name": f"{table.names[s]} (every sampled frame)", "pred": pred[sel],
                      "gold": np.nan_to_num(g), "valid": np.isfinite(g).all(axis=1), "gates": {}})
    if items:
        plot_validation(path, items)


def _export(out: Path, backbone, spec, ident_hash: str, metrics: dict, split: dict) -> None:
    """backbone.pth (the best checkpoint's backbone, timm names) then backbone.json (written last)."""
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(out / FINETUNED_WEIGHTS) as tmp:
        torch.save(state, tmp)
    atomic_write_json(out / FINETUNED_RECORD, {
        "model": spec.model, "input_size": list(spec.input_size), "create_kwargs": dict(spec.create_kwargs),
        "mean": list(spec.mean), "std": list(spec.std), "interpolation": spec.interpolation,
        "init_weights": spec.weights_id, "sha256": file_digest(out / FINETUNED_WEIGHTS),
        # The split it trained on: a fusion run of another split or fold must not use these features.
        "identity_hash": ident_hash, "val": metrics, "split": split,
    })


def score_split(cfg: Config, split: str, stride: int | None = None) -> dict:
    """Frame-level scores of the finished fine-tuning's own network (best.ckpt, fp32) on ``split``'s
    frames that have a label and a crop: ``{"pooled": {p_va, ccc_v, ccc_a}, "subjects": [...],
    "frames": M}``. ``test`` needs ground truth (``submit.truth_dir``, or the synthetic release's hidden
    one); nothing is trained or written."""
    import torch

    from abaw.features.visual import load_backbone
    from abaw.finetune.data import FinetuneData, frame_table
    from abaw.finetune.module import FinetuneModule, FinetuneNet
    from abaw.metrics import p_va
    from abaw.submit.score import default_truth_dir

    ft = cfg.finetune
    out = output_dir(cfg)
    best = out / "best.ckpt"
    sp, rows, train, _, spec = prepare(cfg)
    # Only the fine-tuning this config would make: scores of another's weights would be mislabelled.
    if _completed(out, stable_hash(identity(cfg, sp, rows))) is None or not best.is_file():
        raise FinetuneError(f"{out} holds no finished fine-tuning of this config to score; run `abaw finetune` "
                            "with it first")
    stride = stride or ft.val_stride
    if split == "val":
        table = frame_table(rows, list(sp.val), cfg.data_root, stride)
    else:
        truth = default_truth_dir(cfg)
        files = {f.stem: f for f in truth.glob("*.txt")} if truth.is_dir() else {}
        test = [n for n, r in rows.items() if r.get("split") == "test" and n in files]
        if not test:
            raise FinetuneError(f"--score test: no ground truth for the test subjects in {truth}")
        table = frame_table({n: {**rows[n], "label_file": str(files[n])} for n in test}, test, cfg.data_root, stride)
    # The fine-tuning's own loaders and network, with ``table`` as the validation frames.
    dm = FinetuneData(train, table, ft, spec.input_size, spec.mean, spec.std, spec.interpolation,
                      ft.samples_per_epoch, cfg.seed)
    lit = FinetuneModule(FinetuneNet(load_backbone(spec), ft.dropout), ft, mean=dm.mean, std=dm.std)
    lit.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    lit.eval()
    pred, gold, pos = _predict(lit, dm.val_dataloader(), torch.device("cpu"))
    ok = np.isfinite(gold).all(axis=1)
    subjects = []
    for i, name in enumerate(table.names):
        m = ok & (table.subjects[pos] == i)
        if m.sum() >= 2:
            s = p_va(pred[m], gold[m])
            subjects.append({"subject": name, "frames": int(m.sum()), "ccc_v": float(s["ccc_v"]),
                             "ccc_a": float(s["ccc_a"]), "mean_pred_v": float(pred[m, 0].mean()),
                             "mean_gold_v": float(gold[m, 0].mean())})
    return {"pooled": _score(pred[ok], gold[ok]), "subjects": subjects, "frames": int(ok.sum()),
            "split": split, "stride": stride}


def cli_finetune(cfg: Config, args) -> int:
    if getattr(args, "score", None):
        r = score_split(cfg, args.score, getattr(args, "stride", None))
        s = r["pooled"]
        print(f"{output_dir(cfg)}: {r['split']} frames with a crop, every {r['stride']}th ({r['frames']:,}): "
              f"CCC_v {s['ccc_v']:.3f}, CCC_a {s['ccc_a']:.3f}, P_VA {s['p_va']:.3f}")
        for row in r["subjects"]:
            print(f"  {row['subject']:<24} {row['frames']:>5} frames  CCC_v {row['ccc_v']:.3f}  CCC_a "
                  f"{row['ccc_a']:.3f}  mean valence {row['mean_pred_v']:+.2f} (truth {row['mean_gold_v']:+.2f})")
        return 0
    if not cfg.features.visual.finetuned:
        print("abaw finetune: fine-tuning is off in this config (features.visual.finetuned is empty); "
              "nothing to do")
        return 0
    metrics, art = finetune(cfg)
    out = output_dir(cfg)
    summary = json.loads((out / "summary.json").read_text())
    print(
        f"fine-tuned {summary['backbone']['model']} at {out}\n"
        f"  frames: {summary['frames']['train_pool']} training ({summary['frames']['per_epoch']} per epoch), "
        f"{summary['frames']['val']} validation\n"
        f"  best epoch {metrics['best_epoch']}: val CCC_v {metrics['ccc_v']:.3f}, CCC_a {metrics['ccc_a']:.3f}, "
        f"P_VA {metrics['p_va']:.3f} (fit {summary['fit_seconds']:.0f} s)\n"
        f"  features.visual.finetuned={cfg.features.visual.finetuned} makes `abaw features` extract from it"
    )
    return 0
