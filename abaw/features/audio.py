"""Audio backbones: one embedding per video frame, from the audio around that frame's real timestamp.

Alignment. Frame i's window is ``[t_i - w/2, t_i + w/2)`` (anchor ``centre``) or ``[t_i - w, t_i)``
(anchor ``end``), with ``t_i = frame_times[i]`` on the container clock and ``w = window_s``. A backbone
turns the track into feature frames, each with a time (the centre of the audio it saw); a frame's
embedding pools the feature frames whose time lies in its window. Windows that reach past either end of
the audio are *clipped* (pooled over the feature frames that exist; VGGish, which needs a full patch, sees
silence there); a window holding no feature frame at all gets a zero embedding and mask False.

Backbones (``AUDIO_PRESETS``):
- ``logmel``: VGGish's front end (16 kHz, 25 ms Hann / 10 ms hop, |STFT| -> 64 mel bands 125-7500 Hz,
  log(mel + 0.01)), pooled per window to [mean, std, rms of the frame-to-frame difference] per band:
  192-d, no weights.
- ``vggish``: the VGGish CNN on the 0.96 s log-mel patch of each window (weights: torchvggish's
  ``vggish-10086976.pth`` via ``weights:``), 128-d before PCA.
- ``wav2vec2_base``, ``hubert_base``, ``wavlm_base_plus``: torchaudio's self-supervised models; the
  transformer layer ``layer`` averaged over the window, 768-d. With ``context: track`` the model runs
  once over the track (in ``segment_s`` pieces with ``margin_s`` of context), with ``window`` once per
  window (exact "this window only" semantics, ~fps * window_s times the compute).

The log-mel spectrogram / model features of the whole track are computed once and pooled per frame, so
memory is that of the track, never N copies of a window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from abaw.features.audio_decode import AudioDecodeError, NoAudioStreamError, decode_audio
from abaw.features.config import AudioBackboneConfig
from abaw.features.registry import RANDOM_INIT_SEED, WeightsError, weights_digest

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUDIO_EXTRACTOR_VERSION",
    "AUDIO_PRESETS",
    "AudioDecodeError",
    "AudioExtractor",
    "AudioPreset",
    "audio_settings",
    "decode_audio",
    "log_mel",
    "resolve_audio",
]

# Bump when a code change alters audio feature values: older caches then get a new directory.
AUDIO_EXTRACTOR_VERSION = 1

_LOGMEL = dict(
    n_fft=512, win_length=400, hop_length=160, n_mels=64, f_min=125.0, f_max=7500.0, log_offset=0.01
)


@dataclass(frozen=True)
class AudioPreset:
    """A named audio backbone: everything here changes its output (hashed into the cache key)."""

    name: str
    kind: str  # logmel | vggish | wav2vec2
    sample_rate: int
    dim: int
    window_s: float  # the recommended window (used when features.audio.window_s <= 0)
    params: dict[str, Any] = field(default_factory=dict)  # front end / model parameters
    note: str = ""  # where weights come from (shown when none are configured)


def _ssl(name: str, builder: str, bundle: str, note: str) -> AudioPreset:
    # hop/receptive field of the convolutional front end shared by the wav2vec2 family (320 / 400 samples)
    params = dict(builder=builder, bundle=bundle, n_layers=12, hop=320, receptive_field=400)
    return AudioPreset(name, "wav2vec2", 16000, 768, 0.96, params, note)


AUDIO_PRESETS: dict[str, AudioPreset] = {
    "logmel": AudioPreset("logmel", "logmel", 16000, 3 * 64, 0.96, dict(_LOGMEL, stats="mean,std,delta_rms")),
    "vggish": AudioPreset(
        "vggish",
        "vggish",
        16000,
        128,
        0.96,
        dict(_LOGMEL, patch_frames=96),
        "torchvggish's vggish-10086976.pth (a state dict) via features.audio.weights",
    ),
    "wav2vec2_base": _ssl(
        "wav2vec2_base",
        "wav2vec2_base",
        "WAV2VEC2_BASE",
        "torchaudio's wav2vec2_fairseq_base_ls960.pth (in ~/.cache/torch/hub/checkpoints after one online "
        "pretrained=true run)",
    ),
    "hubert_base": _ssl(
        "hubert_base", "hubert_base", "HUBERT_BASE", "torchaudio's hubert_fairseq_base_ls960.pth"
    ),
    "wavlm_base_plus": _ssl(
        "wavlm_base_plus", "wavlm_base", "WAVLM_BASE_PLUS", "torchaudio's wavlm_base_plus.pth"
    ),
}


# ---- configuration -> preset, weights, settings ----------------------------------------------------
@dataclass(frozen=True)
class AudioSpec:
    preset: AudioPreset
    window_s: float
    layer: int  # 0-based transformer layer (wav2vec2 family), -1 otherwise
    weights: str  # "none" | "file" | "hub" | "random"
    weights_file: str
    weights_id: str  # digest, bundle name or seed


def resolve_audio(acfg: AudioBackboneConfig) -> AudioSpec:
    """Check ``features.audio`` and resolve its preset, window, layer and weights source.

    Weights, in order: a local file (``weights``), the torchaudio bundle (``pretrained: true``, needs the
    network), random initialisation (only with ``allow_random: true``); otherwise a ``WeightsError`` that
    says how to provide them.
    """
    acfg.validate()
    if acfg.preset not in AUDIO_PRESETS:
        raise ValueError(
            f"features.audio.preset: unknown preset {acfg.preset!r}; known: {sorted(AUDIO_PRESETS)}"
        )
    p = AUDIO_PRESETS[acfg.preset]
    window_s = float(acfg.window_s) if acfg.window_s > 0 else p.window_s
    if p.kind == "vggish" and abs(window_s - 0.96) > 1e-9:
        raise ValueError(f"features.audio.window_s: VGGish sees fixed 0.96 s patches, got {window_s}")
    layer = -1
    if p.kind == "wav2vec2":
        n = p.params["n_layers"]
        layer = acfg.layer + n if acfg.layer < 0 else acfg.layer
        if not 0 <= layer < n:
            raise ValueError(f"features.audio.layer: {acfg.layer} is outside {-n}..{n - 1} for {p.name}")

    if p.kind == "logmel":
        return AudioSpec(p, window_s, layer, "none", "", "")
    if acfg.weights:
        path = Path(acfg.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"features.audio.weights: file {path} does not exist")
        return AudioSpec(p, window_s, layer, "file", str(path.resolve()), weights_digest(path))
    if acfg.pretrained:
        if p.kind == "vggish":
            raise WeightsError(
                "features.audio: torchaudio has no downloadable VGGish; set features.audio.weights to "
                f"{p.note.split(' via ')[0]}"
            )
        return AudioSpec(p, window_s, layer, "hub", "", f"torchaudio.pipelines.{p.params['bundle']}")
    if acfg.allow_random:
        return AudioSpec(p, window_s, layer, "random", "", f"seed={RANDOM_INIT_SEED}")
    hub = (
        "" if p.kind == "vggish" else ", or features.audio.pretrained=true on a machine that can download it"
    )
    raise WeightsError(
        f"features.audio: no weights configured for {p.name!r}. Set features.audio.weights=/path/to/file "
        f"({p.note}){hub}; features.audio.allow_random=true gives random features (tests and the demo only)."
    )


def audio_settings(acfg: AudioBackboneConfig) -> dict[str, Any]:
    """Everything that changes the audio features, as a plain dict (the cache key is its hash).

    Batch size and device are absent: they change speed, not values. So is the weights file's path:
    its digest identifies the weights.
    """
    spec = resolve_audio(acfg)
    p = spec.preset
    d: dict[str, Any] = dict(
        kind="audio",
        preset=p.name,
        backbone=p.kind,
        sample_rate=p.sample_rate,
        dim=p.dim,
        params=dict(p.params),
        window_s=spec.window_s,
        anchor=acfg.anchor,
        codec_delay=acfg.codec_delay,
        dtype=acfg.dtype,
        audio_extractor_version=AUDIO_EXTRACTOR_VERSION,  # its own key: the driver adds its extractor_version
    )
    if p.kind != "logmel":
        d.update(weights=spec.weights, weights_id=spec.weights_id)
    if p.kind == "wav2vec2":
        d.update(layer=spec.layer, context=acfg.context)
        if acfg.context == "track":
            d.update(segment_s=float(acfg.segment_s), margin_s=float(acfg.margin_s))
    return d


# ---- log-mel front end (VGGish's) ------------------------------------------------------------------
def _hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


def vggish_mel_matrix(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """float64 [n_fft // 2 + 1, n_mels]: VGGish's mel weights (triangles in the HTK mel domain, DC bin
    zeroed), as in its ``mel_features.spectrogram_to_mel_matrix``, so that VGGish weights see the input
    they were trained on."""
    bins_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1))
    edges = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lo) / (mid - lo)
    down = (hi - bins_mel[:, None]) / (hi - mid)
    m = np.maximum(0.0, np.minimum(up, down))
    m[0, :] = 0.0
    return m


def n_stft_frames(n_samples: int, win_length: int, hop_length: int) -> int:
    return 0 if n_samples < win_length else 1 + (n_samples - win_length) // hop_length


def log_mel(
    wave: np.ndarray, sample_rate: int = 16000, device: Any = "cpu", chunk_frames: int = 6000, **kw
) -> np.ndarray:
    """float32 [T, n_mels]: VGGish's log-mel spectrogram; frame j covers samples [j*hop, j*hop + win)
    (no centring padding). Computed in chunks so the complex STFT never exists for the whole track."""
    import torch

    p = {**_LOGMEL, **kw}
    win, hop, n_fft = p["win_length"], p["hop_length"], p["n_fft"]
    mel = torch.from_numpy(vggish_mel_matrix(sample_rate, n_fft, p["n_mels"], p["f_min"], p["f_max"])).float()
    mel = mel.to(device)
    window = torch.hann_window(win, periodic=True, device=device)
    T = n_stft_frames(len(wave), win, hop)
    out = np.empty((T, p["n_mels"]), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with torch.inference_mode():
        for j0 in range(0, T, chunk_frames):
            j1 = min(T, j0 + chunk_frames)
            seg = x[j0 * hop : (j1 - 1) * hop + win].to(device)
            mag = torch.fft.rfft(seg.unfold(0, win, hop) * window, n=n_fft).abs()
            out[j0:j1] = torch.log(mag @ mel + p["log_offset"]).cpu().numpy()
    return out


# ---- window geometry and pooling -------------------------------------------------------------------
def window_bounds(frame_times: np.ndarray, start: float, rate: int, window_s: float, anchor: str):
    """(lo, hi) float64 [N]: each frame's window in samples of the track (sample 0 = ``start``)."""
    t = (np.asarray(frame_times, np.float64) - start) * rate
    w = window_s * rate
    return (t - w / 2, t + w / 2) if anchor == "centre" else (t - w, t)


def frames_in_window(lo, hi, first_centre: float, hop: int, n_frames: int):
    """(j0, j1) int64 [N]: the feature frames k with ``lo <= first_centre + k * hop < hi``, clipped to
    [0, n_frames]. The small slack keeps a centre that falls exactly on an edge on the right side of it
    despite rounding."""
    j0 = np.ceil((lo - first_centre) / hop - 1e-6)
    j1 = np.ceil((hi - first_centre) / hop - 1e-6)
    j0 = np.clip(j0, 0, n_frames).astype(np.int64)
    j1 = np.clip(j1, 0, n_frames).astype(np.int64)
    return j0, np.maximum(j0, j1)


def window_sums(x: np.ndarray, j0: np.ndarray, j1: np.ndarray) -> np.ndarray:
    """[N, D] sums of rows ``x[j0[i]:j1[i]]`` (zeros for empty ranges). ``x`` must end with one spare
    row (index ``T``), so that every bound is a valid index for ``np.add.reduceat``."""
    if len(j0) == 0:
        return np.zeros((0, x.shape[1]), x.dtype)
    idx = np.empty(2 * len(j0), np.int64)
    idx[0::2], idx[1::2] = j0, j1
    sums = np.add.reduceat(x, idx, axis=0)[0::2]
    sums[j1 <= j0] = 0
    return sums


# ---- backbones -------------------------------------------------------------------------------------
def _resolve_device(device: Any) -> torch.device:
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_state_dict(model, path: str, what: str) -> None:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-torch files
        raise ValueError(f"features.audio.weights: {path} is not a torch checkpoint ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"features.audio.weights: {path} is not a {what} state dict: {str(e)[:600]}") from e


def _build_vggish():
    from torch import nn

    def conv(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(inplace=True)]

    class VGGish(nn.Module):
        """VGGish (Hershey et al. 2017) with torchvggish's layer names, so its checkpoint loads as is."""

        def __init__(self):
            super().__init__()
            pool = nn.MaxPool2d(2, 2)
            self.features = nn.Sequential(
                *conv(1, 64),
                pool,
                *conv(64, 128),
                pool,
                *conv(128, 256),
                *conv(256, 256),
                pool,
                *conv(256, 512),
                *conv(512, 512),
                pool,
            )
            self.embeddings = nn.Sequential(
                nn.Linear(512 * 4 * 6, 4096),
                nn.ReLU(True),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Linear(4096, 128),
                nn.ReLU(True),
            )

        def forward(self, x):  # [B, 1, 96 frames, 64 bands]
            x = self.features(x)
            # Flatten channels-last, as the TensorFlow original did, for its fc weights to apply.
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            return self.embeddings(x)

    return VGGish()


def _build_model(spec: AudioSpec, device):
    import torch

    p = spec.preset
    if spec.weights == "hub":
        import torchaudio

        model = getattr(torchaudio.pipelines, p.params["bundle"]).get_model()
    else:
        if p.kind == "vggish":
            build = _build_vggish
        else:
            import torchaudio

            build = getattr(torchaudio.models, p.params["builder"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.weights_id.split("=")[-1]) if spec.weights == "random" else 0)
            model = build()
        if spec.weights == "file":
            _load_state_dict(model, spec.weights_file, f"{p.name} ({p.kind})")
    return model.eval().to(device)


_MODEL_CACHE: dict[tuple, Any] = {}


def _shared_model(spec: AudioSpec, device):
    """The model for ``spec``'s weights, built once: extractors that differ only in layer, window or
    context (the benchmark, several configs in one process) share it. One model is kept at a time."""
    key = (spec.preset.name, spec.weights, spec.weights_file, spec.weights_id, str(device))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = _build_model(spec, device)
    return _MODEL_CACHE[key]


def _conv_frames(model, n_samples: int) -> int:
    """Feature frames the wav2vec2 convolutional front end makes from ``n_samples`` samples."""
    n = n_samples
    for layer in model.feature_extractor.conv_layers:
        n = (n - layer.conv.kernel_size[0]) // layer.conv.stride[0] + 1
        if n <= 0:
            return 0
    return n


class AudioExtractor:
    """Per-frame audio embeddings of one backbone: ``embed_video(path, frame_times) -> (feats, mask)``."""

    def __init__(self, acfg: AudioBackboneConfig, device: Any = "cpu"):
        self.cfg = acfg
        self.spec = resolve_audio(acfg)
        self.preset = self.spec.preset
        self.name = self.preset.name
        self.dim = self.preset.dim
        self.sample_rate = self.preset.sample_rate
        self.device = _resolve_device(device)
        self.model = None if self.preset.kind == "logmel" else _shared_model(self.spec, self.device)

    def embed_video(self, video_path: str | Path, frame_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [N, dim] embeddings and bool [N] mask for frames at ``frame_times`` (container
        seconds). No audio stream: zeros and an all-False mask. Undecodable audio: ``AudioDecodeError``."""
        t = np.asarray(frame_times, dtype=np.float64)
        if t.ndim != 1 or not np.isfinite(t).all():
            raise ValueError(
                f"{video_path}: frame_times must be a 1-D array of finite seconds, got shape {t.shape}"
            )
        try:
            wave, rate, start = decode_audio(video_path, self.sample_rate, self.cfg.codec_delay)
        except NoAudioStreamError:
            return np.zeros((len(t), self.dim), np.float32), np.zeros(len(t), bool)
        return self.embed_waveform(wave, start, t)

    def embed_waveform(
        self, wave: np.ndarray, start: float, frame_times: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``embed_video`` for a mono track at ``sample_rate`` whose sample 0 is at ``start`` s."""
        t = np.asarray(frame_times, dtype=np.float64)
        lo, hi = window_bounds(t, start, self.sample_rate, self.spec.window_s, self.cfg.anchor)
        kind = self.preset.kind
        if kind == "logmel":
            return self._logmel(wave, lo, hi)
        if kind == "vggish":
            return self._vggish(wave, lo, hi)
        if self.cfg.context == "window":
            return self._ssl_windows(wave, lo, hi)
        return self._ssl_track(wave, lo, hi)

    # -- log-mel statistics
    def _logmel(self, wave, lo, hi):
        p = self.preset.params
        L = log_mel(wave, self.sample_rate, self.device)
        T, B = L.shape
        j0, j1 = frames_in_window(lo, hi, p["win_length"] / 2, p["hop_length"], T)
        # [L, L^2] plus the spare row window_sums needs; float64 keeps E[x^2] - E[x]^2 accurate.
        x = np.zeros((T + 1, 2 * B), np.float64)
        x[:T, :B] = L
        x[:T, B:] = np.square(x[:T, :B])
        d2 = np.zeros((T + 1, B), np.float64)  # row j: (L[j+1] - L[j])^2
        if T > 1:
            d2[: T - 1] = np.square(np.diff(L.astype(np.float64), axis=0))
        n = (j1 - j0).astype(np.float64)[:, None]
        s = window_sums(x, j0, j1)
        sd = window_sums(d2, j0, np.maximum(j0, j1 - 1))
        mask = j1 > j0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s[:, :B] / n
            std = np.sqrt(np.maximum(s[:, B:] / n - mean**2, 0.0))
            delta = np.sqrt(sd / np.maximum(n - 1, 1.0))
        out = np.concatenate([mean, std, delta], axis=1)
        out[~mask] = 0.0
        return out.astype(np.float32), mask

    # -- VGGish on each window's 96-frame patch
    def _vggish(self, wave, lo, hi):
        import torch

        p = self.preset.params
        L = log_mel(wave, self.sample_rate, self.device)
        T, B = L.shape
        j0, j1 = frames_in_window(lo, hi, p["win_length"] / 2, p["hop_length"], T)
        mask = j1 > j0
        # The patch starts at the window's first frame, also where that lies outside the track: the
        # missing frames are silence (log of the offset), as if the recording were padded with zeros.
        first = np.ceil((lo - p["win_length"] / 2) / p["hop_length"] - 1e-6).astype(np.int64)
        silence = np.float32(math.log(p["log_offset"]))
        Lp = np.concatenate([L, np.full((1, B), silence, np.float32)])
        out = np.zeros((len(lo), self.dim), np.float32)
        rows = np.flatnonzero(mask)
        bs = self.cfg.batch_size
        with torch.inference_mode():
            for b in range(0, len(rows), bs):
                r = rows[b : b + bs]
                k = first[r, None] + np.arange(p["patch_frames"])
                k = np.where((k >= 0) & (k < T), k, T)
                x = torch.from_numpy(Lp[k]).unsqueeze(1).to(self.device)
                out[r] = self.model(x).float().cpu().numpy()
        return out, mask

    # -- wav2vec2 family
    def _layer(self, x: torch.Tensor) -> torch.Tensor:
        feats, _ = self.model.extract_features(x, num_layers=self.spec.layer + 1)
        return feats[-1]

    def _ssl_track(self, wave, lo, hi):
        """Frame features of the whole track, computed ``segment_s`` at a time with ``margin_s`` of context
        on each side (a transformer's attention is quadratic in length), then averaged per window."""
        import torch

        p = self.preset.params
        hop, rf = p["hop"], p["receptive_field"]
        T = _conv_frames(self.model, len(wave))
        feats = np.zeros((T + 1, self.dim), np.float32)
        core = max(1, int(round(self.cfg.segment_s * self.sample_rate / hop)))
        margin = int(round(self.cfg.margin_s * self.sample_rate / hop))
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        with torch.inference_mode():
            for c0 in range(0, T, core):
                c1 = min(T, c0 + core)
                f0, f1 = max(0, c0 - margin), min(T, c1 + margin)
                # Input starting at sample f0 * hop puts local frame r on global frame f0 + r. The last
                # segment takes the tail too: the first layer's group norm sees it in a one-pass run.
                seg = x[f0 * hop : (f1 - 1) * hop + rf if f1 < T else len(x)].to(self.device)
                y = self._layer(seg[None])[0]
                feats[c0:c1] = y[c0 - f0 : c1 - f0].float().cpu().numpy()
        j0, j1 = frames_in_window(lo, hi, rf / 2, hop, T)
        return self._mean(feats, j0, j1)

    def _ssl_windows(self, wave, lo, hi):
        """Each window through the model on its own. Full windows go in batches; windows clipped by the
        track's ends go alone, since padding would change the first layer's group norm statistics."""
        import torch

        rf = self.preset.params["receptive_field"]
        W = int(round(self.spec.window_s * self.sample_rate))
        s0 = np.ceil(lo - 1e-6).astype(np.int64)
        a, b = np.clip(s0, 0, len(wave)), np.clip(s0 + W, 0, len(wave))
        mask = (b - a) >= rf
        out = np.zeros((len(lo), self.dim), np.float32)
        full = np.flatnonzero(mask & (b - a == W))
        part = np.flatnonzero(mask & (b - a < W))
        bs = self.cfg.batch_size
        with torch.inference_mode():
            for i in range(0, len(full), bs):
                r = full[i : i + bs]
                batch = np.stack([wave[a[k] : b[k]] for k in r])
                y = self._layer(torch.from_numpy(batch).to(self.device))
                out[r] = y.mean(dim=1).float().cpu().numpy()
            for k in part:
                y = self._layer(
                    torch.from_numpy(np.ascontiguousarray(wave[a[k] : b[k]]))[None].to(self.device)
                )
                out[k] = y[0].mean(dim=0).float().cpu().numpy()
        return out, mask

    @staticmethod
    def _mean(feats: np.ndarray, j0: np.ndarray, j1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = (j1 - j0)[:, None]
        mask = j1 > j0
        out = window_sums(feats, j0, j1) / np.maximum(n, 1)
        return out.astype(np.float32), mask
