"""Pruning saves work: the same study (space, trial count, sampler seed) run with the median pruner and
without one, on the demo release's cached features; prints epochs trained and wall time of each and the
ratio, next to the best validation P_VA each found."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

N_TRIALS = 8
MAX_EPOCHS = 5


def _study(cfg, pruner: str, tmp: Path):
    from abaw.config import with_overrides
    from abaw.tuning.study import run_study

    cfg = with_overrides(cfg, [f"tune.pruner={pruner}", f"tune.study=bench-{pruner}",
                               f"tune.storage=sqlite:///{tmp / f'{pruner}.db'}", f"tune.export_dir={tmp}",
                               f"tune.n_trials={N_TRIALS}", f"tune.max_epochs={MAX_EPOCHS}",
                               "tune.pruner_warmup_epochs=1", "tune.pruner_startup_trials=3", "tune.seed=0"])
    t0 = time.perf_counter()
    study = run_study(cfg)
    seconds = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in trials)
    pruned = sum(t.state.name == "PRUNED" for t in trials)
    best = max((t.value for t in trials if t.value is not None), default=float("nan"))
    return epochs, seconds, pruned, best


def main() -> None:
    import torch

    from abaw.config import load_config
    from abaw.features.extract import extract_features
    from abaw.synth.generate import generate

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = load_config("configs/demo.yaml", ["train.window=150", "train.hop=100", "features.visual.precision=32"])
        generate(cfg.data_root, seed=cfg.synth.seed, scale=cfg.synth.scale)
        for kind in ("visual", "audio"):
            extract_features(cfg, kind)
        cfg = load_config("configs/demo.yaml", ["train.window=150", "train.hop=100", "features.visual.precision=32",
                                                 f"cache_root={cfg.cache_root}"])
        rows = {p: _study(cfg, p, tmp) for p in ("none", "median")}
        for p in rows:  # the trials' run folders are throwaway too
            shutil.rmtree(cfg.release_cache / "runs" / f"tune-bench-{p}", ignore_errors=True)
    print(f"{N_TRIALS} trials x up to {MAX_EPOCHS} epochs, same TPE seed")
    print(f"{'pruner':8} {'epochs':>7} {'seconds':>8} {'pruned':>7} {'best P_VA':>10}")
    for p, (epochs, seconds, pruned, best) in rows.items():
        print(f"{p:8} {epochs:7d} {seconds:8.1f} {pruned:7d} {best:10.4f}")
    e0, s0 = rows["none"][0], rows["none"][1]
    e1, s1 = rows["median"][0], rows["median"][1]
    print(f"epochs with pruning / without: {e1 / e0:.2f}  (wall time ratio {s1 / s0:.2f})")
