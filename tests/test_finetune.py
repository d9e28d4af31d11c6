"""`abaw finetune`: the visual backbone fine-tuned on training crops only, resumable, and handed to
`features` through a cache key that carries the fine-tuned checkpoint's digest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from abaw.config import with_overrides

# Tiny and quick: a few dozen frames per epoch at 32 px; gradual unfreezing so the schedule is exercised.
FAST = ["finetune.samples_per_epoch=48", "finetune.val_stride=24", "finetune.layers=gradual",
        "finetune.unfreeze_every=1"]


def _cfg(synth_cfg, where, *more):
    return with_overrides(synth_cfg, [f"features.visual.finetuned={where}", *FAST, *more])


@pytest.fixture(scope="module")
def tuned(synth_cfg, tmp_path_factory):
    """One fine-tuning on the tiny release, with every crop the loaders decoded recorded."""
    from abaw.finetune import data as ftdata
    from abaw.finetune.run import finetune

    reads: list[tuple[str, str, int]] = []
    real = ftdata.FaceFrames.__getitem__

    def spy(self, g):
        t = self.table
        reads.append(("train" if t is spy.train else "val", t.names[t.subjects[g]], int(t.frames[g])))
        return real(self, g)

    real_init = ftdata.FinetuneData.__init__

    def init(self, train, *a, **k):
        spy.train = train
        real_init(self, train, *a, **k)

    cfg = _cfg(synth_cfg, tmp_path_factory.mktemp("ft") / "tuned")
    mp = pytest.MonkeyPatch()
    mp.setattr(ftdata.FaceFrames, "__getitem__", spy)
    mp.setattr(ftdata.FinetuneData, "__init__", init)
    try:
        metrics, artifacts = finetune(cfg)
    finally:
        mp.undo()
    return cfg, metrics, artifacts, reads


def test_finetuning_writes_its_artifacts(tuned):
    cfg, metrics, art, _ = tuned
    for key in ("weights", "record", "best", "last", "config", "metrics", "plot", "summary", "identity"):
        assert art[key].is_file(), key
    assert np.isfinite(metrics["ccc_v"]) and metrics["epochs"] == 2
    record = json.loads(art["record"].read_text())
    assert record["model"] == "resnet18.a1_in1k" and record["input_size"] == [32, 32]


def test_training_reads_only_training_frames_with_labels_and_crops(tuned):
    from abaw.data.annotations import read_annotations
    from abaw.data.index import load_index
    from abaw.features.extract import crop_presence
    from abaw.training.folds import make_split

    cfg, _, _, reads = tuned
    table = load_index(cfg).table
    rows = {r["subject"]: r for r in table.iter_rows(named=True)}
    split = make_split(table, cfg.train.folds, cfg.train.fold, cfg.train.fold_seed)
    train_reads = [(s, f) for role, s, f in reads if role == "train"]
    val_reads = {s for role, s, _ in reads if role == "val"}
    assert len(train_reads) == 2 * 48  # two epochs of samples_per_epoch frames
    assert {s for s, _ in train_reads} <= set(split.train)
    assert len({s for s, _ in train_reads}) == len(split.train)  # balanced: every subject is drawn
    assert val_reads <= set(split.val)  # validation crops are only ever scored, never trained on
    test_subjects = {r["subject"] for r in table.iter_rows(named=True) if r["split"] == "test"}
    assert test_subjects and not test_subjects & ({s for s, _ in train_reads} | val_reads)
    for s, f in train_reads:
        n = int(rows[s]["n_frames"])
        present, _ = crop_presence(cfg.data_root / rows[s]["crop_dir"], n)
        assert read_annotations(cfg.data_root / rows[s]["label_file"]).valid[f] and present[f], (s, f)
        assert f in _strided(rows[s], cfg), (s, f)


def _strided(row, cfg):
    from abaw.finetune.data import frame_table

    return set(frame_table({row["subject"]: row}, [row["subject"]], cfg.data_root,
                           cfg.finetune.stride).frames.tolist())


def test_unfreezing_followed_its_schedule_in_the_run(tuned):
    import polars as pl

    _, _, art, _ = tuned
    history = pl.read_csv(art["metrics"]).filter(pl.col("val/p_va").is_not_null())
    # gradual, one group per epoch: the head alone first, then the top layer group as well.
    assert [int(g) for g in history["trainable_groups"].to_list()] == [0, 1]


def test_finished_finetuning_is_reused_and_another_identity_refused(tuned):
    from abaw.finetune.run import FinetuneError, finetune

    cfg, metrics, art, _ = tuned
    before = art["weights"].stat().st_mtime_ns
    again, _ = finetune(cfg)
    assert again == metrics and art["weights"].stat().st_mtime_ns == before
    with pytest.raises(FinetuneError, match="other settings.*finetune"):
        finetune(with_overrides(cfg, ["finetune.lr=0.05"]))


def test_checkpoint_digest_changes_the_feature_cache_key(tuned, tmp_path):
    import shutil

    import torch

    from abaw.features.extract import resolve_feature_dir

    def feature_dir(c, kind):  # the cache key as extraction computes it (nothing is extracted here)
        return resolve_feature_dir(c, kind)[0]
    from abaw.features.registry import visual_settings

    cfg, _, art, _ = tuned
    frozen = with_overrides(cfg, ["features.visual.finetuned="])
    assert feature_dir(cfg, "visual") != feature_dir(frozen, "visual")
    settings = visual_settings(cfg.features.visual, cfg.release_cache)
    assert settings["weights_id"].startswith("finetuned:")
    # Another fine-tuning of the same backbone (here: one weight changed) gets another cache.
    other = tmp_path / "other"
    shutil.copytree(art["weights"].parent, other)
    state = torch.load(other / "backbone.pth", weights_only=True)
    state["conv1.weight"] += 1.0
    torch.save(state, other / "backbone.pth")
    moved = with_overrides(cfg, [f"features.visual.finetuned={other}"])
    assert feature_dir(moved, "visual") != feature_dir(cfg, "visual")


def test_features_from_the_finetuning_load_into_training(tuned):
    import torch

    from abaw.features.cache import FeatureCache
    from abaw.features.extract import extract_features, feature_dir
    from abaw.features.visual import VisualExtractor
    from abaw.training.train import train

    cfg, _, art, _ = tuned
    for kind in ("visual", "audio"):
        assert extract_features(cfg, kind).ok
    # The cached features are the fine-tuned backbone's, not a fresh random one's.
    ext = VisualExtractor(cfg.features.visual, "cpu", release_cache=cfg.release_cache)
    state = torch.load(art["weights"], weights_only=True)
    assert torch.equal(ext.model.state_dict()["conv1.weight"], state["conv1.weight"])
    cache = FeatureCache(feature_dir(cfg, "visual"))
    assert cache.complete and cache.dim == 512
    metrics, artifacts = train(with_overrides(cfg, ["model.variant=visual", "train.max_epochs=1",
                                                    "train.name=from-finetuned"]))
    assert np.isfinite(metrics["ccc_v"])
    summary = json.loads(artifacts["summary"].read_text())
    assert summary["features"]["visual"]["dir"] == str(feature_dir(cfg, "visual"))


def test_a_fold_whose_validation_subjects_were_fine_tuned_on_is_refused(tuned):
    """Features fine-tuned on the official train split leak into a fold that validates on those
    subjects: training refuses before it starts; the official split itself is accepted."""
    from abaw.data.index import load_index
    from abaw.training.folds import make_split
    from abaw.training.train import FinetuneLeakError, check_finetuning_split

    cfg, _, _, _ = tuned
    table = load_index(cfg).table
    check_finetuning_split(cfg, make_split(table))  # the split it was fine-tuned on
    with pytest.raises(FinetuneLeakError, match="validation subjects"):
        # Some fold validates on official training subjects, which the fine-tuning saw.
        for fold in range(2):
            check_finetuning_split(cfg, make_split(table, 2, fold))


def test_missing_or_foreign_finetuning_is_a_clear_error(synth_cfg, tmp_path, tuned):
    from abaw.errors import AbawError
    from abaw.features.extract import resolve_feature_dir

    def feature_dir(c, kind):  # what `abaw features` resolves before extracting
        return resolve_feature_dir(c, kind)[0]

    with pytest.raises(AbawError, match="run `abaw finetune`"):
        feature_dir(with_overrides(synth_cfg, ["features.visual.finetuned=never-made"]), "visual")
    cfg, _, art, _ = tuned
    wrong = with_overrides(cfg, ["features.visual.preset=resnet50"])
    with pytest.raises(AbawError, match="resnet50"):
        feature_dir(wrong, "visual")


def test_finetune_resumes_after_a_kill(synth_cfg, tmp_path):
    import pytorch_lightning as pl

    from abaw.finetune.run import finetune

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1:  # in epoch 1, after epoch 0's checkpoints were written
                raise KeyError("killed in epoch 1")  # not KeyboardInterrupt: Lightning would swallow it

    cfg = _cfg(synth_cfg, tmp_path / "resumed", "finetune.layers=decay")
    with pytest.raises(KeyError, match="killed"):
        finetune(cfg, callbacks=[Kill()])
    out = tmp_path / "resumed"
    assert (out / "last.ckpt").is_file() and not (out / "summary.json").exists()

    started = []

    class Watch(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            started.append(trainer.current_epoch)

    metrics, art = finetune(cfg, callbacks=[Watch()])
    summary = json.loads(art["summary"].read_text())
    assert started == [1] and summary["resumed_from"].endswith("last.ckpt")
    import polars as pl_

    rows = pl_.read_csv(art["metrics"]).filter(pl_.col("val/p_va").is_not_null())
    assert rows["epoch"].to_list() == [0, 1]


def test_score_split_reproduces_the_validation_figure_and_scores_test_against_the_truth(tuned):
    from abaw.data.index import load_index
    from abaw.finetune.run import FinetuneError, score_split

    cfg, metrics, _, _ = tuned
    val = score_split(cfg, "val")
    # the same network on the same frames as the fine-tuning's own validation pass
    assert val["pooled"]["ccc_v"] == pytest.approx(metrics["ccc_v"], abs=1e-5)
    test = score_split(cfg, "test", stride=4)
    splits = {r["subject"]: r["split"] for r in load_index(cfg).table.iter_rows(named=True)}
    assert test["frames"] > 0 and test["subjects"]
    assert {r["subject"] for r in test["subjects"]} <= {n for n, sp in splits.items() if sp == "test"}
    with pytest.raises(FinetuneError, match="no finished fine-tuning of this config"):
        score_split(with_overrides(cfg, ["finetune.lr=0.5"]), "val")


def test_finetune_runs_in_bf16_on_cpu(synth_cfg, tmp_path):
    # The demo's setting: bfloat16 autocast on the CPU (1.67x the fp32 step on AVX512-BF16 cores).
    import torch

    from abaw.finetune.module import FinetuneNet
    from abaw.finetune.run import finetune

    seen: list[tuple[torch.dtype, bool]] = []  # the backbone's output dtype in every forward pass
    real = FinetuneNet.forward

    def spy(self, x):
        seen.append((self.backbone(x).dtype, torch.is_grad_enabled()))
        return real(self, x)

    cfg = _cfg(synth_cfg, tmp_path / "bf16", "finetune.precision=bf16-mixed", "finetune.max_epochs=1",
               "finetune.accelerator=cpu")
    mp = pytest.MonkeyPatch()
    mp.setattr(FinetuneNet, "forward", spy)
    try:
        metrics, art = finetune(cfg)
    finally:
        mp.undo()
    summary = json.loads(art["summary"].read_text())
    assert summary["precision"] == "bf16-mixed" and np.isfinite(metrics["ccc_v"])
    # the training steps really ran in bfloat16 (the final scoring pass is fp32, outside the trainer)
    assert {d for d, grad in seen if grad} == {torch.bfloat16}
    assert torch.float32 in {d for d, grad in seen if not grad}


def test_finetune_is_a_no_op_when_the_config_does_not_ask(synth_cfg, capsys):
    from abaw.finetune.run import cli_finetune

    assert cli_finetune(synth_cfg, None) == 0
    assert "fine-tuning is off" in capsys.readouterr().out


# ---- layer groups -------------------------------------------------------------------------------------
def test_unfreezing_schedule_counts_groups_from_the_top():
    from abaw.finetune.module import unfrozen_groups

    assert [unfrozen_groups(e, 3, 1.0) for e in range(6)] == [0, 1, 2, 3, 3, 3]
    assert [unfrozen_groups(e, 5, 2.0) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [unfrozen_groups(e, 4, 0.5) for e in range(3)] == [0, 2, 4]


@pytest.mark.parametrize("layers", ["gradual", "decay", "all"])
def test_only_unfrozen_groups_change_in_a_step(layers):
    import timm
    import torch

    from abaw.config import from_dict
    from abaw.finetune.config import FinetuneConfig
    from abaw.finetune.module import FinetuneModule, FinetuneNet

    torch.manual_seed(0)
    ft = from_dict(FinetuneConfig, {"layers": layers, "unfreeze_every": 1.0, "layer_decay": 0.5})
    lit = FinetuneModule(FinetuneNet(timm.create_model("resnet18", num_classes=0)), ft)
    groups = lit.groups
    assert len(groups) == 5  # stem + four stages
    opt = torch.optim.AdamW(lit.param_groups(), lr=ft.lr)
    scales = [g["lr_scale"] for g in opt.param_groups]
    if layers == "decay":
        assert scales[0] == pytest.approx(0.5**5) and scales[-1] == 1.0  # stem slowest, head fastest
    else:
        assert set(scales) == {1.0}
    params = dict(lit.net.backbone.named_parameters())
    for epoch in range(3):
        lit.apply_freezing(epoch)
        before = {k: v.detach().clone() for k, v in params.items()}
        opt.zero_grad(set_to_none=True)
        x, y = torch.randn(4, 3, 32, 32), torch.rand(4, 2) * 2 - 1
        lit.loss(lit(x), y, torch.ones(4, dtype=torch.bool)).backward()
        opt.step()
        k = lit.trainable_groups(epoch)
        assert k == (min(epoch, 5) if layers == "gradual" else 5)
        for i, names in enumerate(groups):
            moved = any(not torch.equal(before[n], params[n]) for n in names if params[n].ndim > 1)
            assert moved == (i >= len(groups) - k), (layers, epoch, i)


@pytest.mark.parametrize("preset,side", [("clip_vit_b16", 32), ("mae_vit_b16", 32), ("dinov2_vit_s14", 28)])
def test_new_presets_finetune_at_small_size(preset, side):
    import torch

    from abaw.features.config import VisualBackboneConfig
    from abaw.features.registry import resolve_visual
    from abaw.features.visual import load_backbone
    from abaw.finetune.module import FinetuneNet, layer_groups

    spec = resolve_visual(VisualBackboneConfig(preset=preset, allow_random=True, img_size=side))
    net = FinetuneNet(load_backbone(spec))
    assert len(layer_groups(net.backbone)) >= 3  # embeddings, blocks..., final norm
    out = net(torch.randn(2, 3, side, side))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert net.backbone.blocks[0].attn.qkv.weight.grad is not None


# ---- the sampler --------------------------------------------------------------------------------------
def test_sampler_balances_subjects_and_is_reproducible_per_epoch():
    from abaw.finetune.data import SubjectBalancedSampler

    subjects = np.repeat([0, 1, 2], [500, 20, 3])
    s = SubjectBalancedSampler(subjects, 90, seed=3)
    s.set_epoch(4)
    a = s.indices()
    counts = np.bincount(subjects[a], minlength=3)
    assert counts.tolist() == [30, 30, 30]
    assert len(set(a[subjects[a] == 1].tolist())) == 20  # no repeats before a subject is exhausted
    assert np.array_equal(a, s.indices())
    s.set_epoch(5)
    assert not np.array_equal(a, s.indices())


# ---- pixels: uint8 from the workers, normalised by the module ----------------------------------------
def test_loader_ships_uint8_pixels_that_the_module_normalises(tmp_path):
    import cv2
    import timm
    import torch

    from abaw.finetune.config import FinetuneConfig
    from abaw.finetune.data import FaceFrames, FrameTable, build_augment, mean_pixel
    from abaw.finetune.module import FinetuneModule, FinetuneNet

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    rng = np.random.default_rng(0)
    for k in range(8):
        cv2.imwrite(str(tmp_path / f"{k + 1:05d}.jpg"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (tmp_path / "00009.jpg").write_bytes(b"not a jpeg")
    table = FrameTable(["s"], [str(tmp_path)], np.zeros(9, np.int32), np.arange(9), np.zeros((9, 2), np.float32))
    lit = FinetuneModule(FinetuneNet(timm.create_model("resnet18", num_classes=0)), FinetuneConfig(),
                         channels_last=True, mean=mean, std=std)
    ds = FaceFrames(table, build_augment("face", (32, 32), mean, "bilinear"), (32, 32), mean_pixel(mean))
    ds.transform.set_random_seed(1)
    x = torch.stack([ds[g][0] for g in range(9)])
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 32, 32)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    got = lit.pixels(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.allclose(got, ref, atol=1e-5)
    # The undecodable crop (and an erased hole) is the mean colour: ~0 once normalised, as before.
    assert torch.isnan(ds[8][1]).all() and got[8].abs().max() < 0.01
    # A float batch is taken as already normalised.
    lit.eval()
    with torch.inference_mode():
        assert torch.allclose(lit(ref[:2]), lit(x[:2]), atol=1e-5)

# ---- the synthetic face cue ---------------------------------------------------------------------------
@pytest.mark.parametrize("cues,colour_follows_valence", [("shape+colour", True), ("shape", False)])
def test_shape_only_faces_carry_no_colour_cue(cues, colour_follows_valence):
    from abaw.synth import media

    rng = np.random.default_rng(0)
    app = media.Appearance.random(rng)
    valence = np.linspace(-1, 1, 160).astype(np.float32)
    rng.shuffle(valence)
    n = len(valence)
    faces = media.render_faces(app, valence, np.ones(n, bool), np.zeros(n, np.int8),
                               np.random.default_rng(1), face_cues=cues)
    # Cheeks: skin well inside the head outline, away from eyes, brows and mouth (beyond any head sway).
    yy, xx = np.mgrid[0 : media.CROP, 0 : media.CROP]
    u, w = (xx - app.cx) / app.radius, (yy - app.cy) / app.radius
    cheeks = (np.abs(u) > 0.6) & (np.abs(u) < 0.7) & (w > -0.02) & (w < 0.25)
    rgb = faces[:, cheeks].astype(np.float64).mean(axis=1)  # [n, 3] mean RGB per frame
    colour = rgb / rgb.sum(axis=1, keepdims=True)  # chromaticity: the per-frame lighting gain cancels
    # How much of the colour valence explains (R^2 of a fit on its positive and negative parts: the tint
    # differs between happy and unhappy faces, so a plain correlation would understate it).
    design = np.stack([np.ones(n), np.maximum(valence, 0), np.maximum(-valence, 0)], 1)
    fit = design @ np.linalg.lstsq(design, colour, rcond=None)[0]
    r2 = (1 - ((colour - fit) ** 2).sum(0) / ((colour - colour.mean(0)) ** 2).sum(0)).max()
    assert (r2 > 0.8) if colour_follows_valence else (r2 < 0.1), r2
    # The shape cue is there either way: the mouth region changes with valence.
    mouth = (np.abs(u) < 0.4) & (w > 0.3) & (w < 0.7)
    lo, hi = faces[valence < -0.8][:, mouth].mean(), faces[valence > 0.8][:, mouth].mean()
    assert abs(hi - lo) > 20


def test_release_of_other_face_cues_is_not_reused(tmp_path):
    from abaw.synth import generate as synth

    out = tmp_path / "rel"
    (out / "ground_truth").mkdir(parents=True)
    marker = {"seed": 0, "scale": 1.0, "version": synth.VERSION, "subjects": {}, "traps": []}
    (out / synth.MARKER).write_text(json.dumps(marker))  # written before face_cues was recorded
    assert synth._is_complete(out, 0, 1.0, face_cues="shape+colour")
    assert not synth._is_complete(out, 0, 1.0, face_cues="shape")
    (out / synth.MARKER).write_text(json.dumps({**marker, "face_cues": "shape"}))
    assert synth._is_complete(out, 0, 1.0, face_cues="shape") and not synth._is_complete(out, 0, 1.0, face_cues="shape+colour")
    with pytest.raises(ValueError, match="face_cues"):
        synth.generate(tmp_path / "x", scale=0.05, face_cues="colour")


def test_shipped_configs_ask_for_finetuning():
    from abaw.config import load_config
    from abaw.features.registry import VISUAL_PRESETS

    real = load_config("configs/default.yaml")
    assert real.features.visual.finetuned and real.features.visual.pretrained
    assert real.features.visual.preset in VISUAL_PRESETS and "mae" in real.features.visual.preset
    demo = load_config("configs/demo.yaml")
    assert demo.features.visual.finetuned == "demo" and demo.synth.face_cues == "wild"
    assert demo.features.visual.allow_random and not demo.features.visual.pretrained
