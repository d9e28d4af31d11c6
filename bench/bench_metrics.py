"""CCC metric, window search and subject bootstrap at Aff-Wild2 scale (3 M frame pairs, float32).

Figures, all measured side by side in this process (best of several runs after a compile warm-up):
- Numba ``p_va`` vs a float64 two-pass NumPy reference (target >= 10x faster);
- Numba ``p_va`` vs a memory-bandwidth probe that reads the same three arrays once (a trivial Numba
  sum; target: within 2x of it), with NumPy's own ``sum`` for scale;
- the smoothing-window search over 50 windows (~500 subjects), relative to one ``p_va``;
- a 1,000-resample subject bootstrap, and its Numba resample loop compiled parallel vs serial.
"""

from __future__ import annotations

import time

import numpy as np
from numba import get_num_threads, njit

N_FRAMES = 3_000_000
N_SUBJECTS = 500
N_WINDOWS = 50
N_RESAMPLES = 1000


@njit(cache=True, nogil=True, fastmath=True)
def _probe(x, y, m):
    """Read every byte of the inputs once with almost no arithmetic: what memory alone costs."""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    s = 0.0
    for i in range(xf.shape[0]):
        s += xf[i] + yf[i]
    c = 0
    for i in range(m.shape[0]):
        c += m[i]
    return s + c


def _numpy_reference(pred, gold, mask):
    """The textbook two-pass CCC in float64 with NumPy (what a careful pure-NumPy script does)."""
    out = []
    for d in range(2):
        x = pred[mask, d].astype(np.float64)
        y = gold[mask, d].astype(np.float64)
        mx, my = x.mean(), y.mean()
        dx, dy = x - mx, y - my
        vx, vy, c = (dx * dx).mean(), (dy * dy).mean(), (dx * dy).mean()
        out.append(2 * c / (vx + vy + (mx - my) ** 2))
    return out


def _best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs, in seconds (the least disturbed run on a shared machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.multinomial(N_FRAMES - 1000 * N_SUBJECTS, np.full(N_SUBJECTS, 1 / N_SUBJECTS)) + 1000
    gold = np.empty((N_FRAMES, 2), np.float32)
    pred = np.empty((N_FRAMES, 2), np.float32)
    preds, golds, masks = {}, {}, {}
    start = 0
    for i, n in enumerate(lengths):
        # Slowly varying labels and a noisy, slightly lagging prediction: smoothing has work to do.
        g = np.tanh(np.cumsum(rng.standard_normal((n, 2)), axis=0) * 0.03 + rng.uniform(-0.5, 0.5, 2))
        p = np.roll(g, 5, axis=0) * 0.8 + 0.25 * rng.standard_normal((n, 2))
        gold[start : start + n] = g
        pred[start : start + n] = p
        preds[f"s{i:03d}"] = pred[start : start + n]
        golds[f"s{i:03d}"] = gold[start : start + n]
        start += n
    mask = rng.random(N_FRAMES) > 0.05
    start = 0
    for i, n in enumerate(lengths):
        masks[f"s{i:03d}"] = mask[start : start + n]
        start += n
    return pred, gold, mask, preds, golds, masks


def main() -> None:
    from abaw.metrics import bootstrap, p_va, search_windows, subject_stats
    from abaw.metrics.concordance import pair_stats_2c

    pred, gold, mask, preds, golds, masks = _data()
    mb = (pred.nbytes + gold.nbytes + mask.nbytes) / 1e6
    windows = list(range(1, 2 * N_WINDOWS, 2))
    print(
        f"{N_FRAMES:,} frame pairs float32 ({mb:.0f} MB with the mask), {N_SUBJECTS} subjects, "
        f"{get_num_threads()} numba threads"
    )

    # Warm-up: compile (or load from cache) every kernel before any timing.
    p_va(pred[:5000], gold[:5000], mask[:5000])
    _probe(pred[:10], gold[:10], mask[:10])
    few = dict(list(preds.items())[:3])
    search_windows(few, {s: golds[s] for s in few}, {s: masks[s] for s in few}, windows[:3])
    ss = subject_stats(preds, golds, masks)
    idx = bootstrap.resample_indices(N_SUBJECTS, N_RESAMPLES, seed=0)
    bootstrap.resample_scores(ss, idx[:2], parallel=True)
    bootstrap.resample_scores(ss, idx[:2], parallel=False)

    ref = _numpy_reference(pred, gold, mask)
    ours = p_va(pred, gold, mask)
    err = max(abs(ref[0] - ours["ccc_v"]), abs(ref[1] - ours["ccc_a"]))
    print(f"p_va = {ours['p_va']:.6f}; max |Numba - NumPy float64 reference| = {err:.1e}")

    t_ref = _best(lambda: _numpy_reference(pred, gold, mask), 5)
    t_api = _best(lambda: p_va(pred, gold, mask), 30)
    t_kernel = _best(lambda: pair_stats_2c(pred, gold, mask), 30)
    t_probe = _best(lambda: _probe(pred, gold, mask), 30)
    t_npsum = _best(lambda: (pred.sum(), gold.sum(), mask.sum()), 30)
    print("\n-- CCC on 3 M pairs (p_va: both dimensions, masked) --")
    print(f"NumPy two-pass float64 reference  {t_ref * 1e3:8.2f} ms")
    print(f"Numba p_va (public API)           {t_api * 1e3:8.2f} ms   {mb / 1e3 / t_api:5.1f} GB/s")
    print(f"Numba kernel alone                {t_kernel * 1e3:8.2f} ms   {mb / 1e3 / t_kernel:5.1f} GB/s")
    print(f"bandwidth probe (Numba sum)       {t_probe * 1e3:8.2f} ms   {mb / 1e3 / t_probe:5.1f} GB/s")
    print(f"np.sum of the same arrays         {t_npsum * 1e3:8.2f} ms")
    print(f"speed-up over NumPy reference     {t_ref / t_api:8.1f}x   (target >= 10x)")
    print(f"p_va time / bandwidth probe       {t_api / t_probe:8.2f}x   (target <= 2x)")

    t_search = _best(lambda: search_windows(preds, golds, masks, windows), 3)
    print(
        f"\n-- window search: {N_WINDOWS} windows x 2 dims, {N_FRAMES:,} frames in {N_SUBJECTS} subjects --"
    )
    print(
        f"search_windows                    {t_search * 1e3:8.1f} ms = {t_search / t_api:6.0f} x one p_va "
        f"({t_search / t_api / N_WINDOWS:.1f} x per window)"
    )

    t_boot = _best(lambda: bootstrap.bootstrap_ci(ss, n_resamples=N_RESAMPLES, seed=0), 5)
    t_stats = _best(lambda: subject_stats(preds, golds, masks), 3)
    t_par = _best(lambda: bootstrap.resample_scores(ss, idx, parallel=True), 20)
    t_ser = _best(lambda: bootstrap.resample_scores(ss, idx, parallel=False), 20)
    print(f"\n-- subject bootstrap: {N_RESAMPLES} resamples of {N_SUBJECTS} subjects --")
    print(f"per-subject statistics (one pass) {t_stats * 1e3:8.2f} ms")
    print(f"bootstrap_ci from statistics      {t_boot * 1e3:8.2f} ms")
    print(f"resample loop, parallel (prange)  {t_par * 1e3:8.2f} ms")
    print(f"resample loop, serial             {t_ser * 1e3:8.2f} ms")
    print(f"parallel speed-up                 {t_ser / t_par:8.2f}x on {get_num_threads()} threads")


if __name__ == "__main__":
    main()
