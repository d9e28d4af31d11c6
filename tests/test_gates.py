"""Gate diagnostics on hand-made gate tensors (abaw.metrics.gates)."""

from __future__ import annotations

import numpy as np
import pytest

from abaw.metrics.gates import distribution_stats, entropy, gate_diagnostics, headline


def _iter_gate(attended: np.ndarray) -> np.ndarray:
    """[N, T] attended weights -> [N, T, 2] iteration gate."""
    a = np.asarray(attended, dtype=np.float64)
    return np.stack([1 - a, a], axis=-1)


def test_entropy_is_zero_for_one_hot_and_one_for_uniform():
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)
    assert entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(1.0)
    assert entropy(np.full((1, 3), 1 / 3))[0] == pytest.approx(1.0)
    # H(0.9, 0.1) in nats / log 2
    h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    assert entropy(np.array([[0.1, 0.9]]))[0] == pytest.approx(h)


def test_distribution_stats_by_hand():
    p = _iter_gate([1.0, 0.995, 0.5, 0.005])[:, None, :][:, 0]  # [4, 2]
    s = distribution_stats(p)
    assert s["n_frames"] == 4
    assert s["mean"][1] == pytest.approx((1.0 + 0.995 + 0.5 + 0.005) / 4)
    assert s["std"][1] == pytest.approx(np.std([1.0, 0.995, 0.5, 0.005]))
    assert s["above_99"][1] == pytest.approx(0.5)  # 1.0 and 0.995
    assert s["below_01"][1] == pytest.approx(0.25)  # 0.005
    assert s["one_hot"] == pytest.approx(0.75)  # every frame but the 0.5 one
    assert s["entropy_median"] == pytest.approx(np.median(entropy(p)))


def test_empty_split_is_nan_not_zero():
    s = distribution_stats(np.full((3, 2), 0.5), np.zeros(3, bool))
    assert s["n_frames"] == 0 and np.isnan(s["mean"][1]) and np.isnan(s["entropy_median"])


def test_degraded_split_and_shift():
    n = 10
    att = np.full((n, 2), 0.9)
    att[6:] = 0.3  # frames 6..9: the visual modality is degraded and the gate falls back
    stage = np.tile([0.2, 0.8], (n, 1))
    stage[6:] = [0.7, 0.3]
    gates = {"visual/iter": _iter_gate(att), "visual/stage": stage, "audio/iter": _iter_gate(np.full((n, 2), 0.6))}
    deg = np.zeros(n, bool)
    deg[6:] = True
    valid = np.ones(n, bool)
    valid[0] = False  # an unannotated frame does not count
    d = gate_diagnostics(gates, {"visual": deg, "audio": np.zeros(n, bool)}, valid)
    vi = d["visual/iter"]
    assert vi["kind"] == "iter" and len(vi["iterations"]) == 2
    it = vi["iterations"][0]
    assert it["all"]["n_frames"] == 9
    assert it["degraded"]["n_frames"] == 4 and it["clean"]["n_frames"] == 5
    assert it["degraded"]["mean"][1] == pytest.approx(0.3)
    assert it["clean"]["mean"][1] == pytest.approx(0.9)
    assert it["shift"][1] == pytest.approx(-0.6)
    vs = d["visual/stage"]
    assert vs["kind"] == "stage" and vs["shift"] == pytest.approx([0.5, -0.5])
    assert d["audio/iter"]["iterations"][0]["degraded"]["n_frames"] == 0
    h = headline(d)
    assert h["visual/iter/attended"] == pytest.approx((0.9 * 5 + 0.3 * 4) / 9)
    assert h["visual/iter/shift"] == pytest.approx(-0.6)
    assert h["visual/stage/shift"] == pytest.approx(0.5)
    assert h["visual/iter/above_99"] == 0.0
    assert np.isnan(h["audio/iter/shift"])
    # The audio gate split by the visual modality's degradation: constant 0.6, so no shift.
    assert h["audio/iter/shift_other"] == pytest.approx(0.0)
    assert h["visual/iter/shift_other"] != h["visual/iter/shift_other"]  # audio never degraded: NaN


def test_saturated_gate_reads_as_saturated():
    att = np.full((50, 3), 0.9995)
    d = gate_diagnostics({"audio/iter": _iter_gate(att)})
    h = headline(d)
    assert h["audio/iter/above_99"] == 1.0
    assert h["audio/iter/entropy_median"] < 0.01
    assert "audio/iter/shift" not in h  # no degraded masks given


@pytest.mark.parametrize("name,shape", [("audio/iter", (4, 3)), ("audio/stage", (4, 3, 2)), ("audio/x", (4, 2))])
def test_bad_layouts_are_named(name, shape):
    with pytest.raises(ValueError, match=name.split("/")[0]):
        gate_diagnostics({name: np.full(shape, 0.5)})


def test_near_silent_audio_and_planted_degradation_on_the_tiny_release(synth_release):
    """The real-release proxy (near-silent audio) finds the planted silence and the missing soundtrack;
    the synthetic ground truth gives the same masks the release recorded."""
    import json

    from abaw.synth.generate import MARKER, planted_degradation
    from abaw.synth.media import demux_frame_times
    from abaw.training.report import near_silent

    meta = json.loads((synth_release / MARKER).read_text())
    planted = planted_degradation(synth_release)
    assert set(planted) == set(meta["subjects"])
    checked = set()
    for subject, info in meta["subjects"].items():
        n = info["label_rows"] or info["sample_rows"]
        path = synth_release / info["video_path"]
        times = demux_frame_times(path)[:n]
        if len(times) != n:
            continue
        quiet = near_silent(str(path), times, n)
        if not info["has_audio"]:
            assert quiet.all(), subject
            checked.add("no_audio")
            continue
        silent = np.zeros(n, bool)
        for s, e, kind in planted[subject]["audio"]:
            if kind == "silence":
                silent[s + 8 : e - 8] = True  # away from the edges of the half-second window
        if silent.any():
            assert quiet[silent].mean() > 0.9, subject
            checked.add("silence")
        talking = np.ones(n, bool)
        for s, e, _ in planted[subject]["audio"]:
            talking[max(0, s - 10) : e + 10] = False
        assert quiet[talking].mean() < 0.2, subject
    assert checked == {"no_audio", "silence"}


def test_a_single_iteration_model_has_no_stage_gate_to_diagnose():
    """model.iterations=1 (a tuning trial may draw it): the stage gate is 1 everywhere and is left out,
    while the iteration gate is still diagnosed."""
    n = 6
    gates = {"visual/stage": np.ones((n, 1)), "visual/iter": np.tile([[[0.3, 0.7]]], (n, 1, 1))}
    d = gate_diagnostics(gates)
    assert set(d) == {"visual/iter"}
    assert headline(d)["visual/iter/attended"] == pytest.approx(0.7)


def test_gate_report_splits_the_visual_gates_by_crop_presence():
    """Beside the degradation split, the visual gates are split by the face-crop mask alone."""
    from abaw.training.inference import GATE_PREFIX
    from abaw.training.report import gate_report
    from abaw.training.windows import Stitcher

    n = 12
    att = np.full((n, 2), 0.8)
    att[:3] = 0.2  # frames 0..2: no crop
    no_crop = np.zeros(n, bool)
    no_crop[:3] = True
    st = Stitcher()
    st.add("s", 0, n, {"pred": np.zeros((n, 2)), GATE_PREFIX + "visual/iter": _iter_gate(att),
                       GATE_PREFIX + "audio/iter": _iter_gate(np.full((n, 2), 0.5))},
           {"gold": np.zeros((n, 2)), "mask": np.ones(n, bool)})
    degraded = {"s": {"visual": np.zeros(n, bool), "audio": np.zeros(n, bool)}}
    h = gate_report(st, ["s"], {"s": {**degraded["s"], "no_crop": no_crop}}, "test")["headline"]
    assert h["visual/iter/shift_nocrop"] == pytest.approx(-0.6)
    assert h["visual/iter/nocrop"] == pytest.approx(0.2) and h["visual/iter/crop"] == pytest.approx(0.8)
    assert "audio/iter/shift_nocrop" not in h
    assert "visual/iter/shift_nocrop" not in gate_report(st, ["s"], degraded, "test")["headline"]
