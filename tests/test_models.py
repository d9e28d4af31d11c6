"""abaw.models: every registered variant, forward and backward at small sizes, masks, gates, options."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from abaw.models import MODELS, FusionOutput, build_model, count_parameters
from abaw.models.attention import JointCrossAttention
from abaw.models.config import ATTENTION_VARIANTS, VARIANTS, ModelConfig

IA, IV = 6, 10  # input feature widths (audio, visual)
SMALL = dict(d_audio=8, d_visual=12, tcn_layers=2, tcn_kernel=3, iterations=2, head_hidden=6, dropout=0.1)
ALL = sorted(MODELS)
GATED = {"grjca_hier": ("iter", "stage"), "grjca": ("iter",)}


def small(variant: str, **kw) -> ModelConfig:
    return ModelConfig(variant=variant, **{**SMALL, **kw})


def make(variant: str, seed: int = 0, jitter: bool = True, **kw) -> torch.nn.Module:
    """A small model; ``jitter`` moves every parameter off its initial value, so zero-initialised
    biases and gates cannot hide a frame that leaks through a norm or a gate."""
    torch.manual_seed(seed)
    model = build_model(small(variant, **kw), IA, IV)
    if jitter:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(B: int, L: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, IA, generator=g), torch.rand(B, L, IV, generator=g) * 3


def test_registry_matches_config_names():
    assert set(MODELS) == set(VARIANTS) == {"grjca_hier", "grjca", "rjca", "concat", "xformer", "audio", "visual"}
    with pytest.raises(ValueError, match=r"model.variant='nope'.*grjca_hier"):
        ModelConfig(variant="nope")


@pytest.mark.parametrize("variant", ALL)
def test_forward_backward_at_several_lengths(variant):
    model = make(variant, jitter=False)  # as training starts; the same weights at every length
    for L in (17, 64, 200):
        audio, visual = inputs(2, L, seed=L)
        model.zero_grad()
        out = model(audio, visual)
        assert isinstance(out, FusionOutput)
        assert out.pred.shape == (2, L, 2) and out.pred.dtype == torch.float32
        assert bool((out.pred.abs() < 1).all())
        (out.pred * torch.randn_like(out.pred)).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{variant}: {name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{variant}: {name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{variant}: {name} has an all-zero gradient at L={L}"


@pytest.mark.parametrize("options", [
    dict(encoder="blstm", head="tcn"),
    dict(shared_weights=False, gate_input="att", feed="att", iterations=3),
    dict(paper_mode=True, paper_length=40),
    dict(gate_norm=True, learn_tau=True, gate_dropout=0.3, att_residual=False),
    dict(gate_tau=0.1, stage_tau=0.1),  # the paper's form
])
def test_options_forward_backward(options):
    model = make("grjca_hier", **options)
    audio, visual = inputs(2, 40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    out = model(audio, visual, mask)
    out.pred.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{options}: {name} has an all-zero gradient"


@pytest.mark.parametrize("variant", ALL)
def test_gate_names_shapes_and_sums(variant):
    T = 3
    model = make(variant, iterations=T)
    out = model(*inputs(2, 23))
    expected = {f"{m}/{kind}" for m in ("audio", "visual") for kind in GATED.get(variant, ())}
    assert set(out.gates) == expected
    for name, g in out.gates.items():
        shape = (2, 23, T, 2) if name.endswith("/iter") else (2, 23, T)
        assert g.shape == shape, name
        assert bool((g >= 0).all() and (g <= 1).all()), name
        torch.testing.assert_close(g.sum(-1), torch.ones(shape[:-1]), msg=name)


@pytest.mark.parametrize("variant", sorted(GATED))
def test_gates_open_as_an_even_mix(variant):
    out = make(variant, iterations=3, jitter=False)(*inputs(2, 19))
    for name, g in out.gates.items():
        torch.testing.assert_close(g, torch.full_like(g, 1 / g.shape[-1]), msg=name)


def _hole_mask(B: int, L: int) -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 25:] = False  # right padding
    mask[1, 8:13] = False  # a hole (e.g. frames removed mid-window)
    mask[2, :] = False  # a row with nothing valid must not break the others
    return mask


@pytest.mark.parametrize("variant", ALL)
@pytest.mark.parametrize("encoder,head", [("tcn", "blstm"), ("blstm", "tcn")])
def test_masked_frames_do_not_reach_valid_outputs(variant, encoder, head):
    """What holds for any mask: the *content* of masked frames reaches no valid output or gate."""
    model = make(variant, encoder=encoder, head=head).eval()
    audio, visual = inputs(3, 40)
    mask = _hole_mask(3, 40)
    noisy_a, noisy_v = audio.clone(), visual.clone()
    noisy_a[~mask] = 1e3 * torch.randn(int((~mask).sum()), IA)
    noisy_v[~mask] = -7.0
    with torch.no_grad():
        ref, other = model(audio, visual, mask), model(noisy_a, noisy_v, mask)
    torch.testing.assert_close(other.pred[mask], ref.pred[mask], rtol=0, atol=1e-6)
    for name in ref.gates:
        torch.testing.assert_close(other.gates[name][mask], ref.gates[name][mask], rtol=0, atol=1e-6)
    assert torch.isfinite(other.pred).all()


@pytest.mark.parametrize("variant", ALL)
@pytest.mark.parametrize("encoder,head", [("tcn", "blstm"), ("blstm", "tcn")])
def test_padded_row_equals_the_row_alone(variant, encoder, head):
    """What holds for right padding: a video gets the same output whatever it is batched with."""
    model = make(variant, encoder=encoder, head=head).eval()
    audio, visual = inputs(2, 50)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[0, 31:] = False
    with torch.no_grad():
        batched = model(audio, visual, mask)
        alone = model(audio[:1, :31], visual[:1, :31])
    torch.testing.assert_close(batched.pred[0, :31], alone.pred[0], rtol=0, atol=1e-5)
    for name in alone.gates:
        torch.testing.assert_close(batched.gates[name][0, :31], alone.gates[name][0], rtol=0, atol=1e-5)


def test_correlation_is_a_mean_over_valid_frames():
    torch.manual_seed(0)
    jca = JointCrossAttention({"audio": 8, "visual": 12}, dropout=0.0)
    xs = {"audio": torch.randn(2, 30, 8), "visual": torch.randn(2, 30, 12)}
    full = torch.ones(2, 30, dtype=torch.bool)
    ref = jca.correlation(xs, full)
    # The same frames twice over: a time sum would double C_m, a mean leaves it unchanged.
    twice = jca.correlation({m: torch.cat([x, x], dim=1) for m, x in xs.items()}, torch.ones(2, 60, dtype=torch.bool))
    # Padding with garbage under the mask changes nothing either.
    padded = {m: torch.cat([x, 50 * torch.randn(2, 9, x.shape[-1])], dim=1) for m, x in xs.items()}
    pad_mask = torch.cat([full, torch.zeros(2, 9, dtype=torch.bool)], dim=1)
    masked = jca.correlation(padded, pad_mask)
    for m in xs:
        assert ref[m].shape == (2, xs[m].shape[-1], 20)
        torch.testing.assert_close(twice[m], ref[m])
        torch.testing.assert_close(masked[m], ref[m])


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_paper_mode_checks_the_length(variant):
    model = make(variant, paper_mode=True, paper_length=32)
    out = model(*inputs(2, 32))
    out.pred.sum().backward()
    assert out.pred.shape == (2, 32, 2)
    with pytest.raises(ValueError, match=r"expected L=32 frames, got L=31"):
        model(*inputs(2, 31))


def test_paper_mode_masks_padding():
    model = make("grjca_hier", paper_mode=True, paper_length=40).eval()
    audio, visual = inputs(3, 40)
    mask = _hole_mask(3, 40)
    noisy_a = audio.clone()
    noisy_a[~mask] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(noisy_a, visual, mask).pred[mask], model(audio, visual, mask).pred[mask],
                                   rtol=0, atol=1e-6)


def _jca_params(da: int, dv: int, paper_length: int | None = None) -> int:
    D = da + dv
    keys = sum((paper_length or d) ** 2 + (paper_length or d) for d in (da, dv))
    values_and_outs = sum((d * d + d) + (D * d + d) for d in (da, dv))
    return (D * D + D) + keys + values_and_outs


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
@pytest.mark.parametrize("gate_input", ["concat", "att"])
def test_per_iteration_weights_add_one_layer_per_extra_iteration(variant, gate_input):
    T, da, dv = 3, SMALL["d_audio"], SMALL["d_visual"]
    shared = count_parameters(make(variant, iterations=T, gate_input=gate_input))
    separate = count_parameters(make(variant, iterations=T, gate_input=gate_input, shared_weights=False))
    gate_width = 2 if gate_input == "concat" else 1
    gates = sum(gate_width * d * 2 + 2 for d in (da, dv)) if variant in GATED else 0
    assert separate - shared == (T - 1) * (_jca_params(da, dv) + gates)
    paper = count_parameters(make(variant, iterations=T, gate_input=gate_input, paper_mode=True, paper_length=50))
    assert paper - shared == _jca_params(da, dv, 50) - _jca_params(da, dv)


def test_variant_parameter_counts_are_ordered():
    counts = {v: count_parameters(make(v)) for v in ALL}
    assert counts["rjca"] < counts["grjca"] < counts["grjca_hier"]
    assert counts["concat"] < counts["rjca"]
    assert counts["audio"] < counts["concat"] and counts["visual"] < counts["concat"]
    model = make("concat")
    model.head.requires_grad_(False)
    assert count_parameters(model) < count_parameters(model, trainable_only=False) == counts["concat"]


@pytest.mark.parametrize("variant", ALL)
def test_eval_is_deterministic_and_half_inputs_are_cast(variant):
    model = make(variant).eval()
    audio, visual = inputs(2, 33)
    audio, visual = audio.half(), visual.half()
    with torch.no_grad():
        first, second = model(audio, visual), model(audio, visual)
        as_float = model(audio.float(), visual.float())
    assert first.pred.dtype == torch.float32
    assert torch.equal(first.pred, second.pred)
    assert torch.equal(first.pred, as_float.pred)


@pytest.mark.parametrize("encoder,head", [("tcn", "blstm"), ("blstm", "tcn")])
def test_mixed_precision_gives_float32_predictions_and_gates(encoder, head):
    model = make("grjca_hier", encoder=encoder, head=head)
    audio, visual = inputs(2, 40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 30:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU stand-in for 16-mixed training on a GPU
        out = model(audio.half(), visual.half(), mask)
    assert out.pred.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in out.gates.values())
    out.pred.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("variant", ["audio", "visual"])
def test_unimodal_ignores_the_other_modality(variant):
    model = make(variant).eval()
    audio, visual = inputs(2, 20)
    used, other = (audio, visual) if variant == "audio" else (visual, audio)

    def run(used_x, other_x):
        return model(used_x, other_x).pred if variant == "audio" else model(other_x, used_x).pred

    with torch.no_grad():
        ref = run(used, other)
        torch.testing.assert_close(run(used, None), ref)
        torch.testing.assert_close(run(used, other * 5 + 1), ref)
        assert not torch.allclose(run(used * 5 + 1, other), ref)  # its own modality does matter
    assert set(model.encoders.keys()) == {variant}


def test_shape_errors_name_expected_and_actual():
    model = make("grjca_hier")
    audio, visual = inputs(2, 17)
    with pytest.raises(ValueError, match=re.escape("audio: expected shape [B, L, 6], got [2, 17, 7]")):
        model(torch.zeros(2, 17, 7), visual)
    with pytest.raises(ValueError, match=re.escape("visual: expected shape [B=2, L=17, 10], got [2, 16, 10]")):
        model(audio, visual[:, :16])
    with pytest.raises(ValueError, match=re.escape("mask: expected shape [B=2, L=17], got [2, 18]")):
        model(audio, visual, torch.ones(2, 18, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected dtype torch.bool"):
        model(audio, visual, torch.ones(2, 17))
    with pytest.raises(ValueError, match=re.escape("audio: expected shape [B, L, 6], got [17, 6]")):
        model(audio[0], visual[0])
    with pytest.raises(TypeError, match="visual: expected a tensor"):
        model(audio, None)


@pytest.mark.parametrize("bad,message", [
    (dict(encoder="gru"), "model.encoder='gru'"),
    (dict(tcn_kernel=4), "model.tcn_kernel=4: must be odd"),
    (dict(encoder="blstm", d_audio=7), "model.d_audio=7"),
    (dict(gate_tau=0.0), "model.gate_tau=0.0"),
    (dict(feed="x"), "model.feed='x'"),
    (dict(iterations=0), "model.iterations=0"),
    (dict(dropout=1.0), "model.dropout=1.0"),
    (dict(gate_dropout=1.0), "model.gate_dropout=1.0"),
    (dict(variant="xformer", xf_heads=5), "model.xf_heads=5"),
])
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**bad)
    cfg = ModelConfig()
    for key, value in bad.items():  # a config mutated after construction is checked again at build time
        object.__setattr__(cfg, key, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg, IA, IV)


def test_config_overrides_round_trip():
    from abaw.config import load_config

    cfg = load_config(None, ["model.variant=rjca", "model.iterations=2", "model.paper_mode=true"])
    assert dataclasses.asdict(cfg.model)["variant"] == "rjca" and cfg.model.iterations == 2
    with pytest.raises(ValueError, match="model.head='gru'"):
        load_config(None, ["model.head=gru"])


def test_package_and_config_import_without_torch():
    code = "import sys, abaw.config, abaw.models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_model_code_is_device_agnostic():
    src = Path(__file__).resolve().parents[1] / "abaw" / "models"
    offenders = [p.name for p in src.glob("*.py") if re.search(r"\.cuda\(|device=['\"]cuda", p.read_text())]
    assert offenders == []


# ---- gate options and the xformer baseline ------------------------------------------------------------
def test_normalised_gate_ignores_the_scale_of_its_inputs():
    """gate_norm: the gate sees LayerNorm'd inputs, so scaling the features (as their ReLU scale grows
    in training) does not sharpen it; the paper's form does sharpen."""
    from abaw.models.gates import IterationGate

    torch.manual_seed(0)
    x0, xa = torch.rand(2, 10, 8), torch.rand(2, 10, 8)
    for norm in (True, False):
        gate = IterationGate(8, "concat", 0.1, norm=norm)
        torch.nn.init.normal_(gate.proj.weight, std=0.3)
        g1, _ = gate(x0, xa)
        g10, _ = gate(10 * x0, 10 * xa)
        assert bool((g1 - g10).abs().max() < 1e-3) == norm


def test_learnt_temperature_gets_a_gradient_and_gate_dropout_mixes_evenly():
    from abaw.models.gates import IterationGate

    gate = IterationGate(8, "concat", 1.0, learn_tau=True, dropout=0.999)
    torch.nn.init.normal_(gate.proj.weight, std=1.0)
    x0, xa = torch.rand(2, 10, 8), torch.rand(2, 10, 8)
    gate.train()
    g, _ = gate(x0, xa)
    assert torch.allclose(g, torch.full_like(g, 0.5))  # (almost) every frame dropped to an even mix
    gate.eval()
    g, _ = gate(x0, xa)
    assert not torch.allclose(g, torch.full_like(g, 0.5))  # dropout is for training only
    g[..., 1].sum().backward()
    assert gate.temperature.log_tau.grad is not None and gate.temperature.log_tau.grad != 0
    assert IterationGate(8, "concat", 0.1).tau == pytest.approx(0.1)


def test_without_residual_the_attended_branch_no_longer_contains_the_input():
    """att_residual=false (gated variants): X_att is the attention update alone; an ungated rjca keeps
    the residual whatever the option says (it has no other unimodal path)."""
    from abaw.models.attention import RecursiveJointCrossAttention

    dims = {"audio": 8, "visual": 8}
    xs = {m: torch.rand(1, 12, 8) + 5.0 for m in dims}  # far from what ReLU(W A) produces
    mask = torch.ones(1, 12, dtype=torch.bool)
    for residual in (True, False):
        torch.manual_seed(0)
        rec = RecursiveJointCrossAttention(dims, 1, True, 0.0, residual=residual).eval()
        att = rec.steps[0](xs, mask)
        assert bool((att["audio"] >= xs["audio"] - 1e-6).all()) == residual
    torch.manual_seed(0)
    rjca = RecursiveJointCrossAttention(dims, 1, True, 0.0, iteration_gate=False, stage_gate=False, residual=False)
    assert rjca.steps[0].residual


def test_xformer_is_comparable_in_size_and_has_no_gates():
    full = {v: count_parameters(build_model(ModelConfig(variant=v), 192, 512)) for v in ("grjca_hier", "xformer")}
    assert 0.8 < full["xformer"] / full["grjca_hier"] < 1.25
    out = make("xformer")(*inputs(2, 20), torch.ones(2, 20, dtype=torch.bool))
    assert out.gates == {}


def test_xformer_survives_a_row_without_frames():
    model = make("xformer").eval()
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1] = False
    out = model(*inputs(2, 16), mask)
    assert torch.isfinite(out.pred).all()


# ---- face presence (model.face_presence) ----------------------------------------------------------
@pytest.mark.parametrize("variant", [v for v in ALL if v != "audio"])
def test_face_presence_is_required_and_reaches_the_prediction(variant):
    model = make(variant, face_presence="both").eval()
    audio, visual = inputs(2, 40)
    with pytest.raises(ValueError, match="face_presence.*face"):
        model(audio, visual)
    face = torch.ones(2, 40, dtype=torch.bool)
    missing = face.clone()
    missing[:, 10:20] = False
    with torch.no_grad():
        seen, blind = model(audio, visual, face=face), model(audio, visual, face=missing)
    # Identical features, only the flag differs: the model must tell a fill from a real frame.
    assert not torch.allclose(seen.pred[:, 10:20], blind.pred[:, 10:20])
    with pytest.raises(ValueError, match=r"face: expected shape \[B=2, L=40\]"):
        model(audio, visual, face=face[:, :39])


def test_audio_only_model_takes_no_face_channel():
    model = make("audio", face_presence="both")
    assert not model.face_presence
    model(*inputs(1, 20))  # no face needed


@pytest.mark.parametrize("variant", list(GATED))
def test_gates_start_blind_to_the_face_flag_and_learn_to_use_it(variant):
    """Zero-initialised reliability weights: the flag changes no gate at the start; after a few steps
    of a loss that rewards the attended branch only on face-missing frames, the visual gate's attended
    weight differs between missing and present frames."""
    model = make(variant, jitter=False, face_presence="both")
    audio, visual = inputs(2, 40)
    face = torch.ones(2, 40, dtype=torch.bool)
    face[:, ::3] = False
    g0 = model(audio, visual, face=face).gates["visual/iter"].detach()
    torch.testing.assert_close(g0, torch.full_like(g0, 0.5))  # present or missing: an even mix
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        g = model(audio, visual, face=face).gates["visual/iter"][..., -1]  # attended weight [B, L, T]
        loss = (g[face] - 0.2).pow(2).mean() + (g[~face] - 0.8).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = model(audio, visual, face=face).gates["visual/iter"][..., -1].detach()
    assert float(g[~face].mean() - g[face].mean()) > 0.3


def test_paper_mode_model_states_its_length_floor():
    assert make("grjca_hier", paper_mode=True, paper_length=32).min_length == 32
    assert make("grjca_hier").min_length == 0
    assert make("concat", paper_mode=True, paper_length=32).min_length == 0


@pytest.mark.parametrize("variant", [v for v in ALL if v != "audio"])
@pytest.mark.parametrize("where", ["none", "encoder", "gates", "both"])
def test_the_face_flag_goes_where_configured(variant, where):
    model = make(variant, jitter=False, face_presence=where)
    gated = variant in GATED
    to_gates = gated and where in ("gates", "both")
    # Variants without gates take it in the encoder when asked for the gates: it is never dropped.
    to_encoder = where in ("encoder", "both") or (where == "gates" and not gated)
    assert model.encoders["visual"].project.extra == int(to_encoder)
    if gated:
        assert {g.reliability.extra for layer in model.fusion.gates for g in layer.values()} == {int(to_gates)}
    assert model.face_presence == (where != "none")


def test_a_face_flag_model_runs_in_double_precision():
    """train.precision=64-true: every layer, the gates' reliability weights included, in float64."""
    model = make("grjca_hier", face_presence="both").double()
    audio, visual = inputs(2, 20)
    out = model(audio.double(), visual.double(), face=torch.ones(2, 20, dtype=torch.bool))
    assert out.pred.dtype == torch.float32 and bool(torch.isfinite(out.pred).all())  # the head's float32 contract
    out.pred.sum().backward()
