"""Put the weights a GGUF file holds into a torch model of the same architecture: torch then runs exactly what
llama.cpp runs (SLIM tensors through the Numba reference decoder, stock types through gguf-py's dequantizers).

llama.cpp's converter stores attn_q / attn_k of a llama file with the rows of each head permuted for its rope
layout (interleaved pairs; a qwen2 file keeps the model's order), and may write q, k and v as one fused
`attn_qkv` tensor (q rows, then k, then v; `convert` does where their types and bit maps coincide). This module
splits the fused tensors and undoes the permutation, so the file's rows land on the Hugging Face rows they came
from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import reference_decoder
from .errors import SlimError
from .format import is_slim
from .gguf_in import open_gguf

# the GGUF architectures whose q/k rows the converter permutes (LlamaModel.undo_permute: llama and mistral
# folders are written as 'llama'); qwen2 (Qwen2Model) writes the model's rows as they are
ROPE_PERMUTED = {"llama": True, "qwen2": False}


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the converter's per-head permutation of q/k rows: [h, 2, d/2] -> [h, d/2, 2] order back."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def file_architecture(reader) -> str:
    """general.architecture of an open GGUF; SlimError unless its q/k row order is known (ROPE_PERMUTED)."""
    f = reader.fields.get("general.architecture")
    arch = str(f.contents()) if f is not None else None
    if arch not in ROPE_PERMUTED:
        raise SlimError(f"GGUF architecture {arch!r} is not one this tool reads ({', '.join(ROPE_PERMUTED)})")
    return arch


def parameter_names(model: torch.nn.Module) -> dict[str, str]:
    """{GGUF tensor name: parameter name of `model`} through gguf-py's LLaMA name map (the separate q/k/v names;
    a fused attn_qkv tensor is split into them by tensor_parts)."""
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    by_gguf = {}
    for hf_name, _ in model.named_parameters():
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is not None:
            by_gguf[gname] = hf_name
    return by_gguf


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def model_row_order(tensor_name: str, rows: int, config, arch: str = "llama") -> np.ndarray | None:
    """order[i] = the file row that holds the model's row i for attn_q / attn_k of a file of GGUF architecture
    `arch` (the per-head rope permutation of a llama file); None for every other tensor (its rows are the
    model's). A fused attn_qkv: tensor_parts."""
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    kind = tensor_name.split(".")[-2]
    if kind not in heads or not ROPE_PERMUTED[arch]:
        return None
    return _unpermute_rope_rows(np.arange(rows)[:, None], heads[kind])[:, 0]


def tensor_parts(tensor_name: str, rows: int, config, arch: str) -> list[tuple[str, np.ndarray | None]]:
    """[(GGUF name of a model tensor, order)] of a file tensor: order[i] = the file row that holds that tensor's
    row i (None: the file's rows, as they are). One part, the tensor itself (model_row_order), except for a fused
    `blk.N.attn_qkv` (.weight or .bias): its q rows (num_attention_heads * head_dim), then k and v rows
    (num_key_value_heads * head_dim each), as blk.N.attn_q / attn_k / attn_v, each in the model's row order."""
    if tensor_name.split(".")[-2] != "attn_qkv":
        return [(tensor_name, model_row_order(tensor_name, rows, config, arch))]
    hd = _head_dim(config)
    sizes = (config.num_attention_heads * hd, config.num_key_value_heads * hd, config.num_key_value_heads * hd)
    if sum(sizes) != rows:
        raise SlimError(f"{tensor_name} has {rows} rows; the model's q, k, v have {' + '.join(map(str, sizes))}")
    parts, start = [], 0
    for kind, n in zip(("attn_q", "attn_k", "attn_v"), sizes):
        name = tensor_name.replace(".attn_qkv.", f".{kind}.")
        order = model_row_order(name, n, config, arch)
        parts.append((name, start + (np.arange(n) if order is None else order)))
        start += n
    return parts


def _tensor_as_float(t) -> np.ndarray:
    import gguf

    ne0 = int(t.shape[0])
    if is_slim(int(t.tensor_type)):
        return reference_decoder.decode(np.asarray(t.data), ne0, int(t.tensor_type), t.name)  # validates first
    return np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)


def load_gguf_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Copy every tensor of the GGUF file at `path` into the matching parameter of `model` (a transformers
    LLaMA-family model with the file's shapes; a fused attn_qkv into q, k and v). Returns the number of parameters
    copied; a tensor with no parameter, or a parameter the file lacks (other than a tied output), is an error."""
    reader = open_gguf(path)
    arch = file_architecture(reader)
    cfg = model.config
    params = dict(model.named_parameters())
    by_gguf = parameter_names(model)
    copied = set()
    with torch.no_grad():
        for t in reader.tensors:
            if t.name.startswith("rope_freqs"):
                continue          # computed by the model itself
            shape = tuple(int(n) for n in reversed(t.shape))
            parts = tensor_parts(t.name, shape[0], cfg, arch)
            if any(n not in by_gguf for n, _ in parts):
                raise SlimError(f"{path}: tensor {t.name} has no parameter in the torch model")
            w = _tensor_as_float(t).reshape(shape)
            for name, order in parts:
                hf_name = by_gguf[name]
                wp = w if order is None else w[order]
                p = params[hf_name]
                if tuple(wp.shape) != tuple(p.shape):
                    raise SlimError(f"{path}: {name} has shape {wp.shape}, the model's {hf_name} {tuple(p.shape)}")
                p.copy_(torch.tensor(wp, dtype=p.dtype))
                copied.add(hf_name)
    tied = getattr(cfg, "tie_word_embeddings", False)
    missing = [n for n in params if n not in copied and not (tied and n == "lm_head.weight")]
    if missing:
        raise SlimError(f"{path}: no tensor for {missing[0]} (and {len(missing) - 1} more)")
    return len(copied)


def head_activation_kind(path: str | Path) -> str | None:
    """How llama.cpp's CPU rounds the input of the file's output head: None for F32 (no rounding), 'f16' / 'bf16'
    for F16 / BF16 (their vec_dot_type), else 'q8' (the 8-bit block types the quantized types multiply against)."""
    import gguf

    types = {t.name: t.tensor_type for t in open_gguf(path).tensors}
    head = types.get("output.weight", types.get("token_embd.weight"))
    if head == gguf.GGMLQuantizationType.F32:
        return None
    return {gguf.GGMLQuantizationType.F16: "f16", gguf.GGMLQuantizationType.BF16: "bf16"}.get(head, "q8")
