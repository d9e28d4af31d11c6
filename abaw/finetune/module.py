"""The network (a timm backbone with a small valence-arousal head) and its LightningModule: masked CCC
(+MSE) loss, AdamW with warm-up and cosine decay, layer-wise LR decay or freeze-then-unfreeze by layer
group, validation CCC on frames of the validation subjects. The loaders give uint8 pixels, which the
module normalises on its device; a float batch is taken as already normalised."""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from abaw.metrics.loss import ccc_loss
from abaw.training.module import masked_mse, step_schedule


class FinetuneNet(nn.Module):
    """``backbone`` (pooled features, ``num_classes=0``) -> dropout -> linear -> tanh: (valence, arousal)."""

    def __init__(self, backbone: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(int(backbone.num_features), 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.backbone(x)))


def layer_groups(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone by layer group, from the input (stem) to the top.

    timm's own coarse grouping (``group_matcher(coarse=True)``: stem, then stages or blocks); a model
    without one is a single group.
    """
    from timm.models import group_parameters

    names = [n for n, _ in backbone.named_parameters()]
    if not hasattr(backbone, "group_matcher"):
        return [names]
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    return [list(groups[k]) for k in sorted(groups)]


def unfrozen_groups(epoch: int, n_groups: int, every: float) -> int:
    """How many backbone layer groups (counted from the top) train in ``epoch`` under ``gradual``:
    none in the first ``every`` epochs (the head alone), then one more every ``every`` epochs."""
    return min(n_groups, int(math.floor(epoch / every + 1e-9)))


def backbone_norm(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the backbone's timm data config: where ``resolve_visual`` takes a spec's from."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])


class FinetuneModule(pl.LightningModule):
    """``mean``/``std``: the normalisation of the loaders' uint8 pixels (``FinetuneData.mean/std``); None
    takes the backbone's own (``backbone_norm``)."""

    def __init__(self, net: FinetuneNet, ft, channels_last: bool = False, mean=None, std=None):
        super().__init__()
        self.net, self.ft = net, ft
        self.channels_last = channels_last
        self.groups = layer_groups(net.backbone)
        self.best = -math.inf
        self.history: list[dict] = []
        if mean is None or std is None:
            mean, std = backbone_norm(net.backbone)
        # (x / 255 - mean) / std as one multiply-subtract; not persistent: checkpoints keep their keys.
        std_ = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_ = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std_), persistent=False)
        self.register_buffer("pixel_shift", mean_ / std_, persistent=False)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] -> the network's normalised float input (same memory format)."""
        return x.float().mul_(self.pixel_scale).sub_(self.pixel_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # before the float conversion: a quarter of the bytes to reorder
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype == torch.uint8:
            x = self.pixels(x)
        return self.net(x)

    def loss(self, pred: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gold = torch.where(mask[:, None], gold, torch.zeros_like(gold))
        pred = pred.float()
        if self.ft.loss == "mse":
            return masked_mse(pred, gold, mask)
        loss = ccc_loss(pred, gold, mask)
        if self.ft.loss == "ccc+mse":
            loss = loss + self.ft.mse_weight * masked_mse(pred, gold, mask)
        return loss

    # ---- layer groups -----------------------------------------------------------------------
    def trainable_groups(self, epoch: int) -> int:
        n = len(self.groups)
        return unfrozen_groups(epoch, n, self.ft.unfreeze_every) if self.ft.layers == "gradual" else n

    def apply_freezing(self, epoch: int) -> None:
        """Under ``gradual``, only the head and the top ``trainable_groups(epoch)`` groups get gradients."""
        k = self.trainable_groups(epoch)
        params = dict(self.net.backbone.named_parameters())
        for i, names in enumerate(self.groups):
            trainable = i >= len(self.groups) - k
            for name in names:
                params[name].requires_grad_(trainable)

    def on_train_epoch_start(self) -> None:
        self.apply_freezing(self.current_epoch)
        self._sum, self._n = 0.0, 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        mask = torch.isfinite(y).all(dim=1)
        loss = self.loss(self(x), y, mask)
        self._sum += float(loss.detach())
        self._n += 1
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        return loss

    # ---- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, g = batch
        self._val.append((self(x).float().cpu().numpy(), y.cpu().numpy(), g.cpu().numpy()))

    def val_outputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pred [M, 2], gold [M, 2], table positions [M]) of the last validation pass."""
        if not self._val:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
        return tuple(np.concatenate(parts) for parts in zip(*self._val, strict=True))

    def on_validation_epoch_end(self) -> None:
        from abaw.metrics import p_va

        pred, gold, _ = self.val_outputs()
        ok = np.isfinite(gold).all(axis=1)
        nan = {"p_va": float("nan"), "ccc_v": float("nan"), "ccc_a": float("nan")}
        scores = p_va(pred, np.nan_to_num(gold), ok) if ok.sum() >= 2 else nan
        metrics = {f"val/{k}": float(scores[k]) for k in ("p_va", "ccc_v", "ccc_a")}
        if self.trainer.sanity_checking:
            return
        value = metrics[f"val/{self.ft.monitor}"]
        if np.isfinite(value) and value > self.best:
            self.best = value
        metrics["val/best"] = self.best
        opt = self.trainer.optimizers[0] if self.trainer.optimizers else None
        row = {
            "epoch": self.current_epoch, "step": self.global_step,
            "train/loss": self._sum / self._n if getattr(self, "_n", 0) else float("nan"),
            "lr": float(opt.param_groups[-1]["lr"]) if opt else float("nan"),
            "trainable_groups": self.trainable_groups(self.current_epoch), **metrics,
        }
        self.history.append(row)
        for k in ("train/loss", "lr", "trainable_groups", *metrics):
            self.log(k, float(row[k]), prog_bar=k in ("val/p_va", "val/ccc_v"))

    # ---- optimiser --------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """AdamW groups: per backbone layer group (scaled by ``layer_decay`` per group below the top
        under ``decay``), then the head at the full rate. Biases and norm scales get no weight decay."""
        ft = self.ft
        params = dict(self.net.backbone.named_parameters())
        n = len(self.groups)
        out = []
        units = [(self.groups[i], ft.layer_decay ** (n - i) if ft.layers == "decay" else 1.0) for i in range(n)]
        units.append(([f"head.{k}" for k, _ in self.net.head.named_parameters()], 1.0))
        head = dict(self.net.head.named_parameters())
        for names, scale in units:
            ps = [params[k] if k in params else head[k[len("head."):]] for k in names]
            for decay in (True, False):
                sel = [p for p in ps if (p.ndim >= 2) == decay]
                if sel:
                    out.append({"params": sel, "lr": ft.lr * scale, "lr_scale": scale,
                                "weight_decay": ft.weight_decay if decay else 0.0})
        return out

    def configure_optimizers(self):
        ft = self.ft
        opt = torch.optim.AdamW(self.param_groups(), lr=ft.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": step_schedule(
            opt, total, self.trainer.max_epochs or 1, ft.warmup_epochs, "cosine", ft.min_lr_ratio)}

    # ---- state that must survive a resume ------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["abaw_finetune"] = {"best": self.best, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("abaw_finetune", {})
        self.best = state.get("best", -math.inf)
        self.history = list(state.get("history", []))
