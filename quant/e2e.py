"""End-to-end training of the group scales with the codes fixed (EfficientQAT's E2E-QP stage).

After the block-wise stages every quantized linear is W = d*q + m per group, with integer codes q. Here the codes
stay as they are and only each group's (d, m) move, for all linears of the model at once, trained through the
whole network so that the quantized model's next-token distribution matches the full-precision model's
(KL divergence on the calibration windows). Block-wise training matches each block's output in isolation;
this stage sees the loss the model is judged on. Only (d, m) train (2 numbers per group), yet with few windows
that is still enough to fit the windows rather than the model (Qwen2.5-Coder-1.5B, 16 windows), hence the
held-out windows that choose the epoch (train_scales' `heldout`).

Parametrization (why not d, m directly): d = d0 * exp(s), m = m0 + d0 * t with s, t trained from 0, so one AdamW
learning rate means the same relative step for every group whatever its scale, and d stays positive (the file's
scale carries no sign). The result goes back onto the storage grid (quantizer.round_scale_fp16, fp16 m) with
the same codes, so it is a QuantizedLinear the SLIM writer packs as before.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .quantizer import round_scale_fp16
from .result import QuantizedLinear

DEFAULT_LR = 1e-3        # per step, relative: AdamW moves s and t by about this much per step


class ScaledCodes(nn.Module):
    """Parametrization of a linear's weight as d0*exp(s) * q + (m0 + d0*t), q fixed (uint8 codes)."""

    def __init__(self, ql: QuantizedLinear, device: torch.device):
        super().__init__()
        self.group_size = ql.group_size
        self.register_buffer("q", ql.q.to(device))                 # uint8 [rows, cols]
        self.register_buffer("bits", ql.bits.to(device))
        self.register_buffer("d0", ql.d.float().to(device))        # [rows, G], on the storage grid
        self.register_buffer("m0", ql.m.float().to(device))
        self.s = nn.Parameter(torch.zeros_like(self.d0))
        self.t = nn.Parameter(torch.zeros_like(self.d0))

    def scale_offset(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d0 * torch.exp(self.s), self.m0 + self.d0 * self.t

    def forward(self, W: torch.Tensor) -> torch.Tensor:      # W (the original weight) only gives dtype
        d, m = self.scale_offset()
        g = self.group_size
        rows, cols = self.q.shape
        w = d.unsqueeze(-1) * self.q.view(rows, -1, g).float() + m.unsqueeze(-1)
        return w.reshape(rows, cols).to(W.dtype)

    @torch.no_grad()
    def finalize(self) -> QuantizedLinear:
        d, m = self.scale_offset()
        d = round_scale_fp16(d, self.bits.to(torch.int32).unsqueeze(0))
        m = m.clamp(-65504, 65504).half()
        return QuantizedLinear(self.bits.cpu(), self.q.cpu(), d.cpu(), m.cpu(), self.group_size)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) on the next-token distributions."""
    s = F.log_softmax(student_logits.float(), dim=-1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def train_scales(student: nn.Module, teacher: nn.Module, linears: dict[str, QuantizedLinear],
                 windows: torch.Tensor, epochs: int, lr: float = DEFAULT_LR, batch_size: int = 1,
                 seed: int = 0, progress: bool = True,
                 on_epoch: Callable[[int, float], None] | None = None,
                 heldout: torch.Tensor | None = None) -> tuple[dict[str, QuantizedLinear], dict]:
    """Train the (d, m) of `linears` ({parameter name of `student`: its QuantizedLinear}) end to end.

    student: the model holding the quantized weights (every other weight as the file stores it); teacher: the
    full-precision model; windows [n, seqlen] calibration token ids. Both models stay in eval mode (no dropout)
    and on their own devices; only the (s, t) of the parametrizations get gradients. Returns the trained
    QuantizedLinears (storage grid, same codes) and {"loss": [mean KL per epoch], "loss_before": ...}.

    heldout [h, seqlen]: windows not trained on. Their KL is measured before training and after every epoch, and
    the scales of the best of those states are kept (the starting ones if no epoch lowers it): with few windows
    the training can fit them and lose elsewhere (Qwen2.5-Coder-1.5B, 16 windows: calibration KL 3.5 -> 1.2, the
    evaluation text's 1.108 -> 1.099 only; docs/results/2026-12-03-qwen-slimplus-tune.md).
    """
    device = next(student.parameters()).device
    for p in student.parameters():
        p.requires_grad_(False)
    params = []
    for name, ql in linears.items():
        module_name, _, pname = name.rpartition(".")
        module = student.get_submodule(module_name)
        parametrize.register_parametrization(module, pname, ScaledCodes(ql, device), unsafe=True)
        pq = module.parametrizations[pname][0]
        params += [pq.s, pq.t]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t_device = next(teacher.parameters()).device

    def batches() -> Iterable[torch.Tensor]:
        order = torch.randperm(windows.shape[0], generator=gen)
        for i in range(0, len(order), batch_size):
            yield windows[order[i:i + batch_size]]

    @torch.no_grad()
    def teacher_logits(x):
        return teacher(input_ids=x.to(t_device), use_cache=False).logits.to(device)

    @torch.no_grad()
    def mean_loss(ws: torch.Tensor) -> float:
        tot = 0.0
        for i in range(0, ws.shape[0], batch_size):
            x = ws[i:i + batch_size]
            tot += float(kl_to_teacher(student(input_ids=x.to(device), use_cache=False).logits, teacher_logits(x)))
        return tot / len(range(0, ws.shape[0], batch_size))

    info = {"loss_before": mean_loss(windows), "loss": [], "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "parameters": sum(p.numel() for p in params)}
    def snapshot(epoch: int, kl: float) -> dict:
        return {"epoch": epoch, "kl": kl, "state": [p.detach().clone() for p in params]}

    if heldout is not None:
        best = snapshot(0, mean_loss(heldout))
        info["heldout_windows"] = int(heldout.shape[0])
        info["heldout"] = [best["kl"]]
    for ep in range(epochs):
        it = batches()
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=-(-windows.shape[0] // batch_size), desc=f"e2e epoch {ep + 1}/{epochs}", unit="step")
        run = 0.0
        for k, x in enumerate(it, 1):
            loss = kl_to_teacher(student(input_ids=x.to(device), use_cache=False).logits, teacher_logits(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.item()
            if progress:
                it.set_postfix(kl=f"{run / k:.4f}")
        info["loss"].append(run / k)
        if heldout is not None:
            kl = mean_loss(heldout)
            info["heldout"].append(kl)
            if kl < best["kl"]:
                best = snapshot(ep + 1, kl)
        if on_epoch:
            on_epoch(ep, run / k)
    if heldout is not None:   # back to the best state (epoch 0: the file's own scales)
        with torch.no_grad():
            for p, v in zip(params, best["state"]):
                p.copy_(v)
        info["kept_epoch"] = best["epoch"]
    out = {}
    for name in linears:
        module_name, _, pname = name.rpartition(".")
        module = student.get_submodule(module_name)
        out[name] = module.parametrizations[pname][0].finalize()
        parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
        with torch.no_grad():   # the storage-grid weight, exactly what the file will hold
            getattr(module, pname).copy_(out[name].dequantize().to(getattr(module, pname).dtype))
    info["loss_after"] = mean_loss(windows)
    if heldout is not None:
        info["heldout_after"] = mean_loss(heldout)
    return out, info
