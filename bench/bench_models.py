"""Model cost: forward+backward time and parameter count of every variant at window 300, batch 16
(Ia=128 log-mel embeddings, Iv=512 ResNet-18 features), next to a plain 2-layer BLSTM over the
concatenated features measured in the same run. Rounds are interleaved, so load on a shared machine
moves every row alike, and each time is the fastest round: other processes only ever add time, so the
minimum is the least disturbed measurement. CPU time is printed beside wall time: on a machine with
more runnable processes than cores, the wall time of many small multi-threaded ops is dominated by
threads waiting for each other, and the script says so (BENCH_THREADS=1 then gives usable figures).

    .venv/bin/python -m bench models        (BENCH_DEVICE=cuda to time on a GPU, BENCH_THREADS=n)
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from abaw.models import MODELS, build_model, count_parameters
from abaw.models.config import ModelConfig

BATCH, WINDOW, IN_AUDIO, IN_VISUAL = 16, 300, 128, 512
ROUNDS = 3


class ConcatBLSTM(nn.Module):
    """The reference: BLSTM(2 layers, 128 per direction) over [audio; visual] -> Linear -> tanh."""

    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 2)

    def forward(self, audio, visual, mask=None):
        h, _ = self.lstm(torch.cat([audio, visual], dim=-1).float())
        return torch.tanh(self.out(h))


def _step(model: nn.Module, audio: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor) -> None:
    out = model(audio, visual, mask)
    pred = out if isinstance(out, torch.Tensor) else out.pred
    pred.square().mean().backward()
    model.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"blstm2 (reference)": ConcatBLSTM(IN_AUDIO + IN_VISUAL)}
    for name in MODELS:
        models[name] = build_model(ModelConfig(variant=name), IN_AUDIO, IN_VISUAL)
    models["grjca_hier encoder=blstm"] = build_model(ModelConfig(encoder="blstm"), IN_AUDIO, IN_VISUAL)
    models["grjca_hier per-iteration"] = build_model(ModelConfig(shared_weights=False), IN_AUDIO, IN_VISUAL)
    models["grjca_hier paper_mode"] = build_model(ModelConfig(paper_mode=True), IN_AUDIO, IN_VISUAL)
    models["grjca_hier gate_norm learn_tau"] = build_model(ModelConfig(gate_norm=True, learn_tau=True),
                                                           IN_AUDIO, IN_VISUAL)
    for model in models.values():
        model.to(device).train()

    # float16 inputs, as read from the feature cache. Full windows, as nearly all training windows are
    # (the last one of a video is end-aligned): the reference BLSTM does not pack either.
    audio = torch.randn(BATCH, WINDOW, IN_AUDIO, device=device).half()
    visual = torch.rand(BATCH, WINDOW, IN_VISUAL, device=device).half()
    mask = torch.ones(BATCH, WINDOW, dtype=torch.bool, device=device)

    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up: allocator, kernels, thread pool
        _step(model, audio, visual, mask)
    for _ in range(ROUNDS):
        for name, model in models.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            _step(model, audio, visual, mask)
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    ref = "blstm2 (reference)"
    ref_w, ref_c, ref_p = min(wall[ref]), min(cpu[ref]), count_parameters(models[ref])
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"device={device}, threads={torch.get_num_threads()}, batch={BATCH}, window={WINDOW}, "
          f"Ia={IN_AUDIO}, Iv={IN_VISUAL}, fastest of {ROUNDS} interleaved rounds (forward+backward), "
          f"load average {load:.1f} on {cores} cores")
    if load > cores:
        advice = "; rerun with BENCH_THREADS=1" if torch.get_num_threads() > 1 else ""
        print(f"WARNING: more runnable processes than cores: wall times are inflated, and so is the CPU "
              f"time of threads waiting for each other{advice}")
    print(f"{'model':<28}{'params':>12}{'x ref':>7}{'wall ms':>10}{'x ref':>7}{'cpu ms':>10}{'x ref':>7}")
    for name, model in models.items():
        w, c, p = min(wall[name]), min(cpu[name]), count_parameters(model)
        print(f"{name:<28}{p:>12,}{p / ref_p:>7.2f}{1e3 * w:>10.0f}{w / ref_w:>7.2f}{1e3 * c:>10.0f}{c / ref_c:>7.2f}")


if __name__ == "__main__":
    main()
