"""The runs' ensemble on the clip, as ``abaw predict`` does it: each run's network over its evaluation
windows (``abaw.training.inference.predict_windows``), raw predictions averaged frame by frame, then the
ensemble's saved post-processing (``abaw.submit.predict.ensemble_postprocess``), clipped to [-1, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GATE_PREFIX = "gate:"


@dataclass
class ClipPrediction:
    pred: np.ndarray  # float32 [N, 2]: the ensemble after post-processing, in [-1, 1]
    raw: np.ndarray  # float32 [N, 2]: the runs' mean before post-processing
    gates: dict[str, np.ndarray]  # "<modality>/<kind>" -> float32 [N, ...], averaged over the runs
    postprocess: dict


def gate_columns(gates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat per-frame columns: ``gate_<m>_iter<t>`` (weight of the attended features at iteration t,
    0 = unattended) and ``gate_<m>_stage<t>`` (weight of iteration t in the stage gate)."""
    cols = {}
    for name, g in sorted(gates.items()):
        m, kind = name.split("/", 1) if "/" in name else (name, "gate")
        if kind == "iter" and g.ndim == 3:
            for t in range(g.shape[1]):
                cols[f"gate_{m}_iter{t}"] = g[:, t, -1]
        elif g.ndim == 2:
            for t in range(g.shape[1]):
                cols[f"gate_{m}_{kind}{t}"] = g[:, t]
        elif g.ndim == 1:
            cols[f"gate_{m}_{kind}"] = g
    return cols


def predict_clip(run_dirs: Sequence[Path], table, caches: dict[str, Path], device=None,
                 progress: bool = True) -> ClipPrediction:
    """Ensemble prediction for the table's one subject from the clip's feature caches."""
    import torch
    from tqdm.auto import tqdm

    from abaw.features.cache import FeatureCache
    from abaw.submit.predict import ensemble_postprocess, load_run
    from abaw.training.datamodule import SubjectSource
    from abaw.training.inference import predict_windows

    subject = table["subject"][0]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    total, gates, counts = None, {}, {}
    first_cfg = None
    for run in tqdm(list(run_dirs), desc="predict", unit="run", disable=not progress):
        model, run_cfg = load_run(run)
        first_cfg = first_cfg or run_cfg
        source = SubjectSource(run_cfg, table=table, audio_cache=FeatureCache(caches["audio"]),
                               visual_cache=FeatureCache(caches["visual"]))
        data = source.open([subject], labels=False)
        tc = run_cfg.train
        model.to(device)
        stitcher = predict_windows(model, data, tc.eval_window_size, tc.eval_hop_size, tc.batch_size,
                                   device=device)
        model.cpu()
        p = stitcher.mean(subject, "pred").astype(np.float64)
        total = p if total is None else total + p
        for key in stitcher.averaged_keys(subject):
            if key.startswith(GATE_PREFIX):
                g = stitcher.mean(subject, key).astype(np.float64)
                name = key[len(GATE_PREFIX):]
                gates[name] = gates.get(name, 0.0) + g
                counts[name] = counts.get(name, 0) + 1
    raw = (total / len(run_dirs)).astype(np.float32)
    choice = ensemble_postprocess(list(run_dirs), first_cfg.postprocess)
    pred = np.clip(choice.apply(raw), -1.0, 1.0).astype(np.float32)
    gates = {k: (v / counts[k]).astype(np.float32) for k, v in gates.items()}
    return ClipPrediction(pred, raw, gates, choice.to_dict())
