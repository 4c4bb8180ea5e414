"""Put the weights a GGUF file holds into a torch model of the same architecture: torch then runs exactly what
llama.cpp runs (SLIM tensors through the Numba reference decoder, stock types through gguf-py's dequantizers).

llama.cpp's converter stores attn_q / attn_k with the rows of each head permuted for its rope layout
(interleaved pairs); this module undoes that, so the file's rows land on the Hugging Face rows they came from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import reference_decoder
from .errors import SlimError
from .format import is_slim
from .gguf_in import open_gguf


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the converter's per-head permutation of q/k rows: [h, 2, d/2] -> [h, d/2, 2] order back."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def parameter_names(model: torch.nn.Module) -> dict[str, str]:
    """{GGUF tensor name: parameter name of `model`} through gguf-py's LLaMA name map."""
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    by_gguf = {}
    for hf_name, _ in model.named_parameters():
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is not None:
            by_gguf[gname] = hf_name
    return by_gguf


def model_row_order(tensor_name: str, rows: int, config) -> np.ndarray | None:
    """order[i] = the file row that holds the model's row i for attn_q / attn_k (the per-head rope permutation);
    None for every other tensor (its rows are the model's)."""
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    kind = tensor_name.split(".")[-2]
    return _unpermute_rope_rows(np.arange(rows)[:, None], heads[kind])[:, 0] if kind in heads else None


def _tensor_as_float(t) -> np.ndarray:
    import gguf

    ne0 = int(t.shape[0])
    if is_slim(int(t.tensor_type)):
        return reference_decoder.decode(np.asarray(t.data), ne0, int(t.tensor_type), t.name)  # validates first
    return np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)


def load_gguf_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Copy every tensor of the GGUF file at `path` into the matching parameter of `model` (a transformers
    LLaMA-family model with the file's shapes). Returns the number of tensors copied; a tensor with no
    parameter, or a parameter the file lacks (other than a tied output), is an error."""
    reader = open_gguf(path)
    cfg = model.config
    params = dict(model.named_parameters())
    by_gguf = parameter_names(model)
    copied = set()
    with torch.no_grad():
        for t in reader.tensors:
            hf_name = by_gguf.get(t.name)
            if hf_name is None:
                if t.name.startswith("rope_freqs"):
                    continue          # computed by the model itself
                raise SlimError(f"{path}: tensor {t.name} has no parameter in the torch model")
            w = _tensor_as_float(t).reshape(tuple(int(n) for n in reversed(t.shape)))
            order = model_row_order(t.name, w.shape[0], cfg)
            if order is not None:
                w = w[order]
            p = params[hf_name]
            if tuple(w.shape) != tuple(p.shape):
                raise SlimError(f"{path}: {t.name} has shape {w.shape}, the model's {hf_name} {tuple(p.shape)}")
            p.copy_(torch.tensor(w, dtype=p.dtype))
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
