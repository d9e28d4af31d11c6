"""The LightningModule: loss, optimiser and schedule, validation by stitched whole subjects.

The network is an ``abaw.models`` module (built here from the model config, or handed in by tests); the
data comes from ``FusionDataModule``. Validation pools every annotated frame of every validation subject
(never unlabelled or padded frames) and scores P_VA with ``abaw.metrics``.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from abaw.training.config import TrainConfig
from abaw.training.inference import forward_batch, gate_means, pooled, stitch_batch
from abaw.training.windows import Stitcher


def masked_mse(pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(pred.dtype).unsqueeze(-1)
    return ((pred - gold) ** 2 * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


def lr_lambda(step: int, total: int, warmup: float, scheduler: str, min_ratio: float) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up from 1 % over ``warmup`` steps, then
    constant (``none``) or a half cosine down to ``min_ratio`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return 0.01 + 0.99 * step / warmup
    if scheduler == "none":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_schedule(opt: torch.optim.Optimizer, total: int, epochs: int, warmup_epochs: float, scheduler: str,
                  min_ratio: float) -> dict:
    """Lightning's ``lr_scheduler`` entry for ``lr_lambda``, stepped per optimiser step: ``total`` steps
    over ``epochs`` epochs, of which ``warmup_epochs`` (fractions allowed) warm up."""
    warmup = warmup_epochs * (total / max(1, epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_lambda(step, total, warmup, scheduler, min_ratio))
    return {"scheduler": sched, "interval": "step"}


class FusionModule(pl.LightningModule):
    def __init__(self, train_cfg: dict, model_cfg: dict, in_audio: int, in_visual: int,
                 model: nn.Module | None = None):
        super().__init__()
        # Plain dicts in the checkpoint: enough to rebuild the network without this run's config file.
        self.save_hyperparameters({"train_cfg": train_cfg, "model_cfg": model_cfg,
                                   "in_audio": in_audio, "in_visual": in_visual})
        from abaw.config import from_dict

        self.tc: TrainConfig = from_dict(TrainConfig, train_cfg, "train")
        if model is None:
            model = build_network(model_cfg, in_audio, in_visual)
        self.model = model
        self.p_va_best = -math.inf
        self.history: list[dict] = []  # one row per validation epoch; restored on resume
        self._train_sum = 0.0
        self._train_n = 0
        self._stitcher: Stitcher | None = None
        self._gates: dict[str, list] = {}

    def forward(self, audio, visual, pad=None, face=None):
        return self.model(audio, visual, pad, face=face)

    # ---- loss -------------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from abaw.metrics.loss import ccc_loss

        # A batch with no annotated frame gives ccc_loss's graph-connected zero (DDP ranks stay in
        # step) without a host sync to find out.
        pred = pred.float()
        loss = ccc_loss(pred, gold, mask)
        if self.tc.loss_mse:
            loss = loss + self.tc.loss_mse * masked_mse(pred, gold, mask)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = forward_batch(self.model, batch)
        loss = self.loss(out.pred, batch["gold"], batch["mask"])
        b = batch["audio"].shape[0]
        # Per step for the progress bar and the loggers (this rank's value: no collective per step); the
        # epoch mean over every rank is logged as train/loss with the validation metrics.
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=b)
        # Summed on the device: a float() here would stall the GPU once per step.
        self._train_sum = self._train_sum + loss.detach() * b
        self._train_n += b
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_sum, self._train_n = 0.0, 0

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._stitcher = Stitcher()
        self._gates = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = forward_batch(self.model, batch)
        # Per-epoch validation needs only the gates' means (below), not per-frame gate tracks.
        stitch_batch(self._stitcher, batch, out, with_gates=False)
        real = batch["pad"] & batch["keep"][:, None] if "keep" in batch else batch["pad"]
        for name, (total, count) in gate_means(out, real).items():
            acc = self._gates.setdefault(name, [0.0, 0.0])
            acc[0] = acc[0] + total.cpu().double().numpy()
            acc[1] = acc[1] + float(count)

    def on_validation_epoch_end(self) -> None:
        from abaw.metrics import p_va

        st = self._gather()
        # Lightning's sanity check and limit_val_batches see only part of the set: score what was seen.
        partial = self.trainer.sanity_checking or self.tc.limit_val_batches < 1.0
        pred, gold, mask = pooled(st, st.subjects(), allow_gaps=partial)
        if mask.sum() >= 2:
            scores = p_va(pred, gold, mask)
        else:
            scores = {"p_va": float("nan"), "ccc_v": float("nan"), "ccc_a": float("nan")}
        metrics = {f"val/{k}": float(scores[k]) for k in ("p_va", "ccc_v", "ccc_a")}
        metrics["val/p_va_best"] = float("nan")  # filled below; keeps the column beside val/p_va
        for name, (total, count) in sorted(self._gates.items()):
            means = np.asarray(total / max(count, 1.0))
            if means.size == 1:
                metrics[f"gate/{name}"] = float(means.reshape(-1)[0])
                continue
            # "gate/audio/iter_2_1": iteration 2, weight on the attended branch.
            for idx in np.ndindex(means.shape):
                metrics[f"gate/{name}_{'_'.join(map(str, idx))}"] = float(means[idx])
        if self.trainer.sanity_checking:
            return
        if np.isfinite(metrics["val/p_va"]) and metrics["val/p_va"] > self.p_va_best:
            self.p_va_best = metrics["val/p_va"]
        metrics["val/p_va_best"] = self.p_va_best
        for k, v in metrics.items():
            # Every rank scored the same whole validation set: syncing averages identical values (a
            # few scalars per epoch) and keeps Lightning's DDP logging checks quiet.
            self.log(k, v, prog_bar=k in ("val/p_va", "val/p_va_best"), sync_dist=True)
        train_loss = self._epoch_train_loss()
        lr = self._current_lr()
        self.log("train/loss", train_loss, sync_dist=True)
        self.log("lr", lr, sync_dist=True)
        row = {"epoch": self.current_epoch, "step": self.global_step, "train/loss": train_loss, "lr": lr,
               **metrics}
        self.history.append(row)

    def _epoch_train_loss(self) -> float:
        return float(self._train_sum) / self._train_n if self._train_n else float("nan")

    def _gather(self) -> Stitcher:
        """This epoch's stitched validation frames from every DDP rank (each scored its own windows),
        merged so every rank scores all frames exactly once; gate sums are added up the same way."""
        import torch.distributed as dist

        if not (self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized()):
            return self._stitcher
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._stitcher.state(), self._gates))
        merged = Stitcher()
        gates: dict[str, list] = {}
        for state, part_gates in parts:
            merged.merge(state)
            for name, (total, count) in part_gates.items():
                acc = gates.setdefault(name, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + total, acc[1] + count
        self._gates = gates
        return merged

    def _current_lr(self) -> float:
        opts = self.trainer.optimizers if self.trainer else []
        return float(opts[0].param_groups[0]["lr"]) if opts else float("nan")

    # ---- optimiser --------------------------------------------------------------------------
    def configure_optimizers(self):
        from abaw.models.gates import IterationGate, StageGate

        gate_ids = {id(p) for m in self.model.modules() if isinstance(m, IterationGate | StageGate)
                    for p in m.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for p in self.model.parameters():
            if p.requires_grad:
                # Biases and norm scales are not weights to shrink.
                groups.setdefault((p.ndim >= 2, id(p) in gate_ids), []).append(p)
        tc = self.tc
        opt = torch.optim.AdamW(
            [{"params": ps, "weight_decay": tc.weight_decay if decays else 0.0,
              "lr": tc.lr * (tc.gate_lr_mult if gate else 1.0)}
             for (decays, gate), ps in sorted(groups.items())],
            lr=tc.lr,
        )
        dm = getattr(self.trainer, "datamodule", None)
        if hasattr(dm, "steps_per_epoch"):  # without touching the loader (see FusionDataModule.steps_per_epoch)
            total = max(1, dm.steps_per_epoch() * int(self.trainer.max_epochs or 1))
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": step_schedule(
            opt, total, self.trainer.max_epochs or 1, tc.warmup_epochs, tc.scheduler, tc.min_lr_ratio)}

    # ---- state that must survive a resume ------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["abaw"] = {"p_va_best": self.p_va_best, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("abaw", {})
        self.p_va_best = state.get("p_va_best", -math.inf)
        self.history = list(state.get("history", []))


def build_network(model_cfg: dict, in_audio: int, in_visual: int) -> nn.Module:
    from abaw.config import from_dict
    from abaw.models import build_model
    from abaw.models.config import ModelConfig

    return build_model(from_dict(ModelConfig, model_cfg, "model"), in_audio, in_visual)
