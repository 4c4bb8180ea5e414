"""Block-wise training of the group quantizer (SliM-LLM+ and stronger modes): plain (d, m, q) per group out.

One decoder block at a time, with SBA's bit map fixed, the block's linears are fake-quantized through trainable
parameters and trained (AdamW) so that the quantized block's output on the quantized model's inputs matches the
full-precision block's output on the full-precision inputs (MSE), as OmniQuant and SliM-LLM+ do. Rounding passes
its gradient straight through. Modes (each a `GroupQuantizer` parametrization of the linear's weight):

  lwc      learnable weight clipping (OmniQuant; SliM-LLM+): per (row, group) hi = sigmoid(gamma) * max(w),
           lo = sigmoid(beta) * min(w); d = (hi - lo) / (2^b - 1), m = lo. The paper's method.
  round    lwc plus a learned rounding offset v in [-1/2, 1/2] per weight (AutoRound's idea): q = round(w' + v).
  weights  the weights themselves and each group's (d, m) trained together (EfficientQAT's block-AP).

Every mode ends in codes q = clamp(round((w - m) / d + v), 0, 2^b - 1) with d, m rounded onto the storage grid
(quant/quantizer.py), so the QuantizedLinear is exactly what the SLIM file stores and its decoders rebuild.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .quantizer import group_view, minmax_range, round_scale_fp16
from .result import QuantizedLinear

TRAIN_MODES = ("lwc", "round", "weights")
# where the parameters start: the weighted fit of the weights as they are (round to nearest), or SliM's GPTQ
# result (its codes, (d, m) and error-compensated weights d*q + m), so training starts from the better quantizer
TRAIN_INITS = ("fit", "gptq")
# what the quantized block's output is trained towards: the full-precision block on the full-precision inputs
# (fp: OmniQuant / SliM-LLM+), on the quantized model's own inputs (quant: a local objective, as GPTQ's, that
# the block can meet without undoing upstream error), or the sum of both (OmniQuant's "aug" loss)
TRAIN_TARGETS = ("fp", "quant", "both")
# how the block output's error is measured: plain mean squared error (OmniQuant / SliM-LLM+), or per token relative
# to the target's root mean square (token_rms), as the next block's RMSNorm passes the residual stream on. Models
# with attention-sink tokens carry a few positions hundreds of times larger than the rest; plain MSE is then
# mostly their error, while every next layer sees each token at unit RMS
TRAIN_LOSSES = ("mse", "token_rms")
# AdamW learning rates: lwc's is the paper's (on sigmoid logits); round's offsets move in code units; weights
# mode trains (d, m) at this rate and the weights at WEIGHT_LR_FACTOR of it (EfficientQAT's 1e-4 / 2e-5)
DEFAULT_LR = {"lwc": 1e-2, "round": 5e-3, "weights": 1e-4}
WEIGHT_LR_FACTOR = 0.2
LWC_INIT_LOGIT = 4.0          # OmniQuant's start: sigmoid(4) = 0.982 of the group's max / min
_CLIP_RATIO = (1e-3, 1 - 1e-3)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(*_CLIP_RATIO)
    return torch.log(p / (1 - p))


class GroupQuantizer(nn.Module):
    """Parametrization of a linear's weight [rows, cols]: the fake-quantized weight d*q + m with bits [G] fixed.

    init_d, init_m [rows, G] (a storage-grid fit, e.g. quant/group_fit.py) start the trainable parameters where
    the gradient-free quantizer ends, so training starts from the better of the two and only improves the loss
    it is trained on."""

    def __init__(self, W: torch.Tensor, bits: torch.Tensor, group_size: int, mode: str,
                 init_d: torch.Tensor, init_m: torch.Tensor):
        super().__init__()
        if mode not in TRAIN_MODES:
            raise ValueError(f"train mode must be one of {TRAIN_MODES}, got {mode!r}")
        self.mode, self.group_size = mode, group_size
        dev = W.device
        self.register_buffer("bits", bits.to(dev, torch.int32))
        self.register_buffer("maxq", (2.0 ** self.bits.float() - 1).unsqueeze(0))       # [1, G]
        d0, m0 = init_d.float().to(dev), init_m.float().to(dev)
        if mode == "weights":
            self.d = nn.Parameter(d0.clone())
            self.m = nn.Parameter(m0.clone())
        else:
            lo, hi = minmax_range(group_view(W.float(), group_size))                   # [rows, G]
            self.register_buffer("wmin", lo)
            self.register_buffer("wmax", hi)
            self.gamma = nn.Parameter(self._init_logit(m0 + d0 * self.maxq, hi))
            self.beta = nn.Parameter(self._init_logit(m0, lo))
        if mode == "round":
            self.v = nn.Parameter(torch.zeros_like(W, dtype=torch.float32))

    @staticmethod
    def _init_logit(target: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """Logit of target / bound where that ratio is a clip in (0, 1); OmniQuant's 4.0 elsewhere."""
        ratio = target / torch.where(bound != 0, bound, torch.ones_like(bound))
        ok = (bound != 0) & (ratio > 0) & (ratio <= 1)
        return torch.where(ok, _logit(ratio), torch.full_like(ratio, LWC_INIT_LOGIT))

    def scale_offset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous (d, m) [rows, G] the parameters define now."""
        if self.mode == "weights":
            return self.d, self.m
        hi = torch.sigmoid(self.gamma) * self.wmax
        lo = torch.sigmoid(self.beta) * self.wmin
        return (hi - lo).clamp(min=1e-8) / self.maxq, lo

    def _codes(self, W: torch.Tensor, d: torch.Tensor, m: torch.Tensor, straight_through: bool) -> torch.Tensor:
        g = self.group_size
        wg = group_view(W.float(), g)
        x = (wg - m.unsqueeze(-1)) / d.unsqueeze(-1).clamp(min=1e-8)
        if self.mode == "round":
            x = x + group_view(self.v.clamp(-0.5, 0.5), g)
        x = round_ste(x) if straight_through else torch.round(x)
        return torch.minimum(x.clamp(min=0), self.maxq.unsqueeze(-1))

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        d, m = self.scale_offset()
        q = self._codes(W, d, m, straight_through=True)
        return (d.unsqueeze(-1) * q + m.unsqueeze(-1)).reshape(W.shape).to(W.dtype)

    @torch.no_grad()
    def finalize(self, W: torch.Tensor) -> QuantizedLinear:
        """Storage-grid (d, m) from the trained parameters, then codes against them: what the file holds."""
        d, m = self.scale_offset()
        d = round_scale_fp16(d.clamp(min=0), self.bits.unsqueeze(0))
        m = m.float().clamp(-65504, 65504).half()
        q = self._codes(W, d.float(), m.float(), straight_through=False)
        q = torch.where(d.unsqueeze(-1).float() > 0, q, torch.zeros_like(q))   # a flat group: every code 0
        return QuantizedLinear(self.bits.to(torch.int8).cpu(), q.reshape(W.shape).to(torch.uint8).cpu(),
                               d.cpu(), m.cpu(), self.group_size)


def layer_forward(layer, hs, kw, on_layer_device: bool = False):
    """A decoder layer's hidden-state output (transformers returns a tuple in some versions). hs may live on the
    host while the layer is on the GPU (activations too large for it, pipeline.activation_store): it goes in on
    the layer's device and the output comes back where hs lives, unless on_layer_device (training: the loss and
    its gradient stay on the GPU)."""
    dev = next(layer.parameters()).device
    out = layer(hs.to(dev), **kw)
    out = out[0] if isinstance(out, tuple) else out
    return out if on_layer_device else to_store(out, hs.device)


def to_store(t: torch.Tensor, store: torch.device) -> torch.Tensor:
    """t on the device activations are kept on: itself when it is there already; from a GPU to the host into
    pinned memory (the next copy back to the GPU is a DMA transfer), blocking, so the host copy is complete."""
    if t.device == store:
        return t
    if store.type == "cpu" and t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t)
        return host
    return t.to(store)


def output_error(out: torch.Tensor, target: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """The training loss of one block output [..., hidden] against its target (TRAIN_LOSSES)."""
    if loss == "token_rms":
        scale = target.pow(2).mean(dim=-1, keepdim=True).add(1e-12).rsqrt()
        return torch.nn.functional.mse_loss(out * scale, target * scale)
    return torch.nn.functional.mse_loss(out, target)


def train_block(layer: nn.Module, linears: dict[str, tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]],
                inputs: list[tuple[torch.Tensor, dict]], targets: list[list[torch.Tensor]], mode: str, epochs: int,
                lr: float, seed: int = 0, on_step=None, loss: str = "mse") -> tuple[dict[str, QuantizedLinear], dict]:
    """Train the quantizers of `layer`'s linears and return their QuantizedLinears and the losses.

    linears: {submodule name: (bits [G], group_size, init_d, init_m)}; inputs: [(hidden_states, layer kwargs)]
    mini-batches on the quantized path; targets: one or more lists of the outputs to match for the same batches
    (the loss is the sum of output_error against each; loss: TRAIN_LOSSES).
    The layer's weights end as the storage-grid fake-quant weights d*q + m; every other parameter of the block
    is left as it was. `on_step(loss)` after every step.
    """
    params = {n: p for n, p in layer.named_parameters()}
    was_trainable = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(False)
    quantizers: dict[str, GroupQuantizer] = {}
    groups = []
    for name, (bits, g, d0, m0) in linears.items():
        mod = layer.get_submodule(name)
        W = mod.weight.data
        quantizers[name] = GroupQuantizer(W, bits, g, mode, d0, m0)
        groups.append({"params": list(quantizers[name].parameters()), "lr": lr})
        parametrize.register_parametrization(mod, "weight", quantizers[name])
        if mode == "weights":   # the weight itself, at a lower rate
            original = mod.parametrizations.weight.original
            original.requires_grad_(True)
            groups.append({"params": [original], "lr": lr * WEIGHT_LR_FACTOR})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def block_loss(i):
        out = layer_forward(layer, inputs[i][0], inputs[i][1], on_layer_device=True).float()
        return sum(output_error(out, t[i].to(out.device).float(), loss) for t in targets)

    with torch.no_grad():
        first = sum(float(block_loss(i)) for i in range(len(inputs))) / len(inputs)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                for i in torch.randperm(len(inputs), generator=gen).tolist():
                    step_loss = block_loss(i)
                    opt.zero_grad(set_to_none=True)
                    step_loss.backward()
                    opt.step()
                    if on_step is not None:
                        on_step(float(step_loss.detach()))
    finally:
        results = {}
        for name, qz in quantizers.items():
            mod = layer.get_submodule(name)
            W = mod.parametrizations.weight.original.detach()
            results[name] = qz.finalize(W)
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
            mod.weight.data.copy_(results[name].dequantize().to(mod.weight.device, mod.weight.dtype))
        for n, p in layer.named_parameters():
            p.requires_grad_(was_trainable.get(n, False))
    with torch.no_grad():
        last = sum(float(block_loss(i)) for i in range(len(inputs))) / len(inputs)
    return results, {"loss_before": first, "loss_after": last,
                     "steps": epochs * len(inputs), "mode": mode, "lr": lr, "loss": loss}


def default_epochs(device: torch.device) -> int:
    """Epochs over the calibration batches: the paper trains 50 on a GPU; on a CPU a reduced default."""
    return 20 if device.type == "cuda" else 4

