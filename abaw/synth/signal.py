"""The hidden signal of the synthetic release: valence/arousal as smooth processes of continuous time,
and a voice whose loudness, pitch and brightness follow arousal.

Everything here is plain NumPy and a pure function of its parameters, so the generator can evaluate a
subject's emotion at whatever timestamps the container ends up holding (labels, crops and audio all
sample the same function of time, never a per-frame array).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOICE_RATE = 16000  # the voice is synthesised here, then resampled exactly to the stream's rate


@dataclass(frozen=True)
class SmoothProcess:
    """x(t) = tanh(mean + sum_j amp_j sin(2 pi f_j t + phase_j)): smooth, bounded in (-1, 1).

    Frequencies of 0.04-0.5 Hz give a correlation time of roughly 1-3 s, like continuous annotations.
    """

    mean: float
    amps: tuple[float, ...]
    freqs: tuple[float, ...]
    phases: tuple[float, ...]

    @classmethod
    def random(cls, rng: np.random.Generator, mean: float, spread: float) -> SmoothProcess:
        n = 6
        freqs = np.sort(rng.uniform(0.04, 0.5, n))
        # Slow components carry more power (1/f-like), so the trace drifts and does not just wiggle.
        w = 1.0 / np.sqrt(freqs)
        amps = spread * w / np.sqrt(np.sum(w**2) / 2.0)  # std of the sum before tanh is ~spread
        return cls(
            mean=float(mean),
            amps=tuple(float(a) for a in amps),
            freqs=tuple(float(f) for f in freqs),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, n)),
        )

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        x = np.full(t.shape, self.mean)
        for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True):
            x += a * np.sin(2 * np.pi * f * t + p)
        return np.tanh(x)


@dataclass(frozen=True)
class Emotion:
    valence: SmoothProcess
    arousal: SmoothProcess

    @classmethod
    def random(cls, rng: np.random.Generator) -> Emotion:
        # Subjects differ in mean and range, so pooled CCC (the challenge metric) rewards getting the
        # per-subject level right, not only the within-subject shape.
        return cls(
            valence=SmoothProcess.random(rng, mean=rng.uniform(-0.45, 0.45), spread=rng.uniform(0.35, 0.8)),
            arousal=SmoothProcess.random(rng, mean=rng.uniform(-0.35, 0.45), spread=rng.uniform(0.3, 0.7)),
        )

    def at(self, t: np.ndarray) -> np.ndarray:
        """float32 [len(t), 2] (valence, arousal) at times t (seconds on the container timeline)."""
        return np.stack([self.valence(t), self.arousal(t)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Voice:
    """One speaker: pitch range, loudness and syllable rhythm; arousal drives level, f0 and brightness."""

    f0_low: float  # f0 at arousal -1 (Hz)
    f0_high: float  # f0 at arousal +1
    level_db: float  # overall level (microphone gain) of this speaker
    syllable_rate: float  # syllables per second
    seed: int

    @classmethod
    def random(cls, rng: np.random.Generator, register: str = "any") -> Voice:
        low = {"low": 95.0, "high": 165.0}.get(register, rng.uniform(100, 150))
        return cls(
            f0_low=float(low),
            f0_high=float(low + rng.uniform(90, 120)),
            level_db=float(rng.uniform(-6, 0)),
            syllable_rate=float(rng.uniform(3.5, 5.5)),
            seed=int(rng.integers(2**31)),
        )


def _syllables(rng: np.random.Generator, duration: float, rate: float) -> list[tuple[float, float, int]]:
    """(start, length, vowel) of each syllable; short gaps, and now and then a breath pause."""
    out, t = [], float(rng.uniform(0, 0.2))
    while t < duration:
        length = float(rng.uniform(0.6, 1.3) / rate)
        out.append((t, length, int(rng.integers(len(_VOWELS)))))
        gap = rng.uniform(0.02, 0.08) if rng.random() > 0.08 else rng.uniform(0.2, 0.45)
        t += length + float(gap)
    return out


# (F1, F2, F3) of a few vowels: the spectral envelope changes syllable to syllable, as in speech,
# independently of the emotion.
_VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))


def synth_voice(
    voice: Voice, arousal: SmoothProcess, t0: float, n: int, silent: list[tuple[float, float]] = ()
) -> np.ndarray:
    """float64 [n] voice at VOICE_RATE, sample k at time t0 + k / VOICE_RATE.

    Per sample: f0 and level follow arousal(t) (high arousal = higher, louder, brighter voice); the
    syllable envelope and vowel formants are random and carry no emotion. ``silent`` time ranges mute
    the speaker.
    """
    rng = np.random.default_rng(voice.seed)
    sr = VOICE_RATE
    t = t0 + np.arange(n) / sr
    duration = n / sr
    # Control signals on a 5 ms grid, interpolated to samples: they are smooth, and this keeps the
    # per-harmonic work proportional to the grid, not the sample count.
    tg = t0 + np.arange(int(duration * 200) + 2) / 200.0
    a = arousal(tg)
    a01 = (a + 1.0) / 2.0
    drift = 1.0 + 0.04 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * tg + rng.uniform(0, 6.3))
    f0_g = (voice.f0_low + (voice.f0_high - voice.f0_low) * a01) * drift
    level_g = 10 ** ((voice.level_db - 20.0 + 20.0 * a01) / 20.0)  # a 20 dB range from calm to excited
    tilt_g = 1.6 - 0.9 * a01  # spectral tilt exponent: excited voices are brighter

    env = np.zeros(len(tg))
    formants = np.zeros((len(tg), 3))
    formants[:] = _VOWELS[0]
    for start, length, vowel in _syllables(rng, duration + 0.5, voice.syllable_rate):
        i0, i1 = int((start) * 200), int((start + length) * 200) + 1
        i0, i1 = max(i0, 0), min(i1, len(tg))
        if i1 <= i0:
            continue
        x = np.linspace(0, np.pi, i1 - i0)
        env[i0:i1] = np.maximum(env[i0:i1], np.sin(x) ** 0.7 * rng.uniform(0.8, 1.2))
        formants[i0:i1] = np.array(_VOWELS[vowel]) * rng.uniform(0.92, 1.08)
    for s0, s1 in silent:
        env[(tg >= s0) & (tg < s1)] = 0.0

    f0 = np.interp(t, tg, f0_g)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    n_harm = int(3800 // voice.f0_low)
    bw = np.array([90.0, 120.0, 180.0])
    # sin(h phase) by the Chebyshev recurrence s_{h+1} = 2 cos(phase) s_h - s_{h-1}: one multiply-add
    # per harmonic instead of a sine.
    two_cos = 2 * np.cos(phase)
    s_prev, s_cur = np.zeros(n), np.sin(phase)
    for h in range(1, n_harm + 1):
        fh = h * f0_g
        # Source: harmonic roll-off steepening for calm voices; filter: three formant peaks.
        gain = (fh / 100.0) ** (-tilt_g)
        gain *= 0.15 + np.sum(np.exp(-0.5 * ((fh[:, None] - formants) / bw) ** 2), axis=1)
        gain[fh > 3800] = 0.0
        out += np.interp(t, tg, gain * env * level_g) * s_cur
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev
    return out


def fft_friendly_length(n: int) -> int:
    """Smallest m >= n that is 320 times a 5-smooth number: m * rate / VOICE_RATE is then an integer for
    16, 22.05, 44.1 and 48 kHz, and the FFTs of resample_exact stay fast."""
    q = -(-n // 320)
    while True:
        r = q
        for f in (2, 3, 5):
            while r % f == 0:
                r //= f
        if r == 1:
            return 320 * q
        q += 1


def resample_exact(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling by zero-padding the spectrum: no delay, so time k/src maps to k/dst."""
    if src == dst:
        return x.copy()
    n = len(x)
    if (n * dst) % src:
        raise ValueError(f"{n} samples at {src} Hz is not a whole number of samples at {dst} Hz")
    m = n * dst // src
    spec = np.fft.rfft(x)
    out_spec = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(spec), len(out_spec))
    out_spec[:k] = spec[:k]
    return np.fft.irfft(out_spec, m) * (m / n)
