"""Make a torch model round its matmul inputs the way ggml's CPU backend does, so torch predicts llama.cpp.

ggml never multiplies a quantized weight by fp32 activations: before a MUL_MAT it converts the activation rows to
the weight type's `vec_dot_type` (ggml-cpu type traits). For SLIM and the legacy 4/5-bit types that is Q8_1, for
Q8_0 and the k-quants 8-bit blocks of 32 (Q8_0) or 256 (Q8_K), for F16 weights fp16. The rounding is ~0.4 %
per value, which on a small model is enough to flip the top-1 token where two candidates are close. With these
hooks `slim2gguf eval` and the tests compare the weights, not the activation formats.

Q8_1 of a block of 32 values x (ggml's quantize_row_q8_1_ref):
    d = max|x| / 127,  q = round(x / d),  stored d' = fp16(d)   ->   the kernel sees x' = d' * q
(the block sum it also stores, fp16(d * sum q), equals sum x' up to one fp16 rounding).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

Q8_BLOCK = 32


def q8_round(x: torch.Tensor, block: int = Q8_BLOCK) -> torch.Tensor:
    """x rounded as ggml's 8-bit activation blocks along the last dimension (Q8_0 / Q8_1 values)."""
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"last dimension {n} is not a multiple of {block}")
    xb = x.float().reshape(*x.shape[:-1], n // block, block)
    d = xb.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    xs = xb * inv
    q = torch.sign(xs) * torch.floor(xs.abs() + 0.5)     # roundf: halves away from zero, as ggml's C code
    return (q * d.half().float()).reshape(x.shape).to(x.dtype)


def f16_round(x: torch.Tensor) -> torch.Tensor:
    return x.half().to(x.dtype)


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().to(x.dtype)


ROUNDERS = {"q8": q8_round, "f16": f16_round, "bf16": bf16_round}


@contextmanager
def ggml_cpu_activations(model: torch.nn.Module, layers: str = "q8", output: str | None = "f16",
                         jitter: float = 0.0, seed: int = 0):
    """Within the block, every nn.Linear of the decoder layers rounds its input with ROUNDERS[layers], and the
    output head (lm_head) with ROUNDERS[output] (None: leave it fp32). `layers` is what the file's linear type
    multiplies against (q8 for SLIM), `output` that of the output tensor (f16 for an F16 head).

    jitter > 0 multiplies every input by (1 + jitter * N(0, 1)) before rounding. With jitter ~1e-7 (float
    summation-order noise) this measures how closely ANY other implementation of the same arithmetic can agree:
    an input that moves by one ulp can land on the other side of an 8-bit rounding boundary, that element's error
    jumps by a whole step, and the difference grows layer by layer (the square root of the perturbation per
    rounding), so two exact emulations part at near-tied tokens all the same."""
    head = model.get_output_embeddings()
    handles = []
    gen = torch.Generator().manual_seed(seed)

    def hook(rounder):
        if jitter:
            return lambda _module, args: (rounder(args[0] * (1 + jitter * torch.randn(
                args[0].shape, generator=gen, dtype=args[0].dtype))), *args[1:])
        return lambda _module, args: (rounder(args[0]), *args[1:])

    try:
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            kind = output if mod is head else layers
            if kind is not None:
                handles.append(mod.register_forward_pre_hook(hook(ROUNDERS[kind])))
        yield model
    finally:
        for h in handles:
            h.remove()
