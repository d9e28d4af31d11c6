"""Small fakes for the training and prediction tests: an index table, label files in the official
format and feature caches in the FeatureCache layout (``<subject>.npy`` + ``<subject>.mask.npy``), built
in a few milliseconds, with features that carry the labels (visual -> valence, audio -> arousal) so a
short training has something to learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from abaw.models.fusion import FusionOutput

D_AUDIO, D_VISUAL = 6, 10


def fake_feature_dir(cfg, kind: str) -> Path:
    """Where the fake caches live; tests patch ``abaw.features.extract.feature_dir`` with this, so the
    code under test finds them the way it finds real ones."""
    return cfg.release_cache / "features" / f"fake-{kind}"


def smooth_track(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.cumsum(rng.normal(0, 0.15, size=(n + 40, 2)), axis=0)
    k = np.ones(15) / 15
    x = np.stack([np.convolve(x[:, j], k, mode="same") for j in range(2)], 1)[20:20 + n]
    x = x - x.mean(0)
    return np.tanh(x / (x.std(0) + 1e-6) * 0.6).astype(np.float32)


def make_fake_release(cfg, root: Path, *, lengths: dict[str, tuple[str, int]] | None = None, seed: int = 0,
                      unlabelled_runs: bool = True, missing_faces: bool = True) -> pl.DataFrame:
    """Write labels and both caches (at the config's feature_dir locations); return the index table.

    ``lengths``: subject -> (split, n_frames). Default: 8 train subjects (two left/right pairs), 3 val,
    2 test, 50..260 frames, some shorter than a 64-frame window."""
    if lengths is None:
        lengths = {
            "v00_left": ("train", 180), "v00_right": ("train", 180), "v01": ("train", 240),
            "v02": ("train", 50), "v03_left": ("train", 130), "v03_right": ("train", 130),
            "v04": ("train", 260), "v05": ("train", 90),
            "v10": ("val", 200), "v11": ("val", 60), "v12": ("val", 150),
            "v20": ("test", 120), "v21": ("test", 40),
        }
    rng = np.random.default_rng(seed)
    adir, vdir = fake_feature_dir(cfg, "audio"), fake_feature_dir(cfg, "visual")
    for d in (adir, vdir, root / "labels"):
        d.mkdir(parents=True, exist_ok=True)
    wa = rng.normal(size=(2, D_AUDIO)) * np.array([[0.2], [1.5]])  # audio: mostly arousal
    wv = rng.normal(size=(2, D_VISUAL)) * np.array([[1.5], [0.2]])  # visual: mostly valence
    rows = []
    for subject, (split, n) in sorted(lengths.items()):
        y = smooth_track(rng, n)
        valid = np.ones(n, dtype=bool)
        if unlabelled_runs and n > 40:
            a = int(rng.integers(5, n - 20))
            valid[a:a + 12] = False  # a -5 run in the middle, as in the real data
        face = np.ones(n, dtype=bool)
        if missing_faces and n > 30:
            b = int(rng.integers(0, n - 10))
            face[b:b + 8] = False
        audio = (y @ wa + rng.normal(0, 0.3, size=(n, D_AUDIO))).astype(np.float16)
        visual = (y @ wv + rng.normal(0, 0.3, size=(n, D_VISUAL))).astype(np.float16)
        np.save(adir / f"{subject}.mask.npy", np.ones(n, dtype=bool))
        np.save(adir / f"{subject}.npy", audio)
        np.save(vdir / f"{subject}.mask.npy", face)
        np.save(vdir / f"{subject}.npy", visual)
        label_file = None
        if split != "test":
            label_file = root / "labels" / f"{subject}.txt"
            vals = np.where(valid[:, None], y, -5.0)
            label_file.write_text("valence,arousal\n" + "".join(f"{v:.4f},{a:.4f}\n" for v, a in vals))
        fps = 30.0 if subject < "v05" else 25.0
        rows.append({
            "subject": subject, "video": subject.replace("_left", "").replace("_right", ""),
            "split": split, "label_file": str(label_file) if label_file else None, "n_frames": n,
            "usable": True, "frame_times": (np.arange(n) / fps).tolist(),
        })
    return pl.DataFrame(rows)


class PointwiseModel(nn.Module):
    """A length-agnostic fake fusion model (each frame on its own), with dropout so that eval mode
    matters and a per-frame gate so that gate logging and stitching have something to carry."""

    def __init__(self, in_audio: int = D_AUDIO, in_visual: int = D_VISUAL, p_drop: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_audio + in_visual, 16), nn.Tanh(), nn.Dropout(p_drop),
                                 nn.Linear(16, 2))
        self.gate = nn.Linear(in_audio + in_visual, 2)
        self.modes: list[bool] = []  # self.training at every forward (eval-mode checks)

    def forward(self, audio, visual, mask=None, face=None):
        self.modes.append(self.training)
        x = torch.cat([audio, visual], dim=-1).float()
        g = torch.softmax(self.gate(x), dim=-1)
        return FusionOutput(torch.tanh(self.net(x)), {"audio/iter": g.unsqueeze(2)})
