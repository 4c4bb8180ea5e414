"""Synthetic SLIM-quantized tensors for the format/decoder/writer tests (no quant/ pipeline needed).

Round-to-nearest with SBA-shaped random bit allocations (slim2gguf.rtn_rows, the one RTN row builder), producing
quant.result.QuantizedLinear like the real pipeline does.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from quant.result import QuantizedLinear
from slim2gguf.gguf_out import qkv_fusable
from slim2gguf.rtn_rows import random_sba_bits, rtn_quantized


def rtn(weight: torch.Tensor, avg_bits: int, group_size: int, seed: int = 0,
        bits: np.ndarray | None = None) -> QuantizedLinear:
    """Round-to-nearest of a [rows, cols] weight with an SBA-shaped random bit map (seeded) unless bits given."""
    if bits is None:
        bits = random_sba_bits(weight.shape[1] // group_size, avg_bits, np.random.default_rng(seed))
    return rtn_quantized(weight, bits, group_size)


def random_quantized(rows: int, cols: int, avg_bits: int, group_size: int, seed: int = 0) -> QuantizedLinear:
    """RTN of a random normal weight (scaled like a real layer)."""
    g = torch.Generator().manual_seed(seed)
    return rtn(torch.randn(rows, cols, generator=g) * 0.05, avg_bits, group_size, seed)


def export_demo_tokenizer(dest: Path) -> Path:
    """SmolLM2's tokenizer (from the demo GGUF) saved as an HF tokenizer folder; llama.cpp's converter knows
    it (pre-tokenizer 'smollm'), transformers loads it without sentencepiece/protobuf."""
    from transformers import AutoTokenizer

    from slim2gguf.model_io import demo_model_path

    p = demo_model_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    Path(dest).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(dest))
    return Path(dest)


@functools.cache
def demo_tokenizer_dir() -> Path:
    """export_demo_tokenizer into a temporary folder, once per process (removed at exit)."""
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="slim-tok-"))
    atexit.register(shutil.rmtree, d, True)
    return export_demo_tokenizer(d)


def make_tiny_llama(out_dir: Path, tokenizer_dir: Path, *, hidden: int = 128, intermediate: int = 192,
                    layers: int = 2, heads: int = 4, kv_heads: int = 2, tie: bool = False, seed: int = 0,
                    nan_weight: str | None = None, arch: str = "llama", max_shard_size: str | None = None
                    ) -> Path:
    """A random HF folder (config, safetensors) of `arch` (llama, mistral or qwen2: the LLaMA family the tool
    reads) with the tokenizer files of tokenizer_dir.

    Widths: q/k/v/o/gate/up read `hidden` (128: g128), down reads `intermediate` (192: g64 only).
    nan_weight: a parameter name whose first element is set to NaN (error-path tests).
    max_shard_size: save_pretrained's, to write several safetensors shards."""
    import shutil

    import transformers

    config_name, model_name = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                               "mistral": ("MistralConfig", "MistralForCausalLM"),
                               "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[arch]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out_dir / f.name)
    cfg = config_cls(vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms too, so a permutation bug cannot hide behind ones
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
            if name == nan_weight:
                p.view(-1)[0] = float("nan")
    model.save_pretrained(out_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return out_dir


LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def rtn_folder(hf_dir: Path, avg_bits: int, group_size: int | None = None, seed: int = 0):
    """RTN-quantize every linear of an HF folder's safetensors: {hf name: QuantizedLinear}.

    group_size None: 128 where the input width allows, else 64 (the converter's default rule)."""
    from safetensors.torch import load_file

    out = {}
    for i, (name, w) in enumerate(sorted(load_file(str(Path(hf_dir) / "model.safetensors")).items())):
        if not name.endswith(LINEAR_SUFFIXES):
            continue
        cols = w.shape[1]
        g = group_size or (128 if cols % 128 == 0 else 64)
        if cols % g:
            continue
        out[name] = rtn(w, avg_bits, g, seed=seed + i)
    return out


QKV_PARTS = ("attn_q", "attn_k", "attn_v")


def fused_blocks(path: Path) -> set[int]:
    """The blocks whose q/k/v a GGUF holds as one attn_qkv tensor."""
    from slim2gguf.gguf_in import open_gguf

    return {int(t.name.split(".")[1]) for t in open_gguf(path).tensors if t.name.endswith(".attn_qkv.weight")}


def qkv_maps_coincide(results, layers: int) -> set[int]:
    """The blocks whose q, k and v results ({hf name: QuantizedLinear}) have one SLIM type and one bit map: the
    blocks the writer fuses (unless told never to)."""
    out = set()
    for i in range(layers):
        qls = [results.get(f"model.layers.{i}.self_attn.{n}_proj.weight") for n in "qkv"]
        if any(ql is None for ql in qls):
            continue
        if qkv_fusable(qls):
            out.add(i)
    return out


def assert_decode_equals_reference(slim_path: Path, ref_path: Path, fused_ref_path: Path | None = None) -> int:
    """Every SLIM tensor of slim_path decodes to the F32 tensor of the same name in ref_path, bit for bit.
    fused_ref_path: the converter's --fuse-qkv file of the same model, for a SLIM file that fuses q/k/v in some
    layers only (where their bit maps coincide): those layers' attn_qkv tensors are compared with it, and the
    names must be ref_path's with those layers' q/k/v replaced by attn_qkv."""
    from slim2gguf.format import is_slim
    from slim2gguf.gguf_in import open_gguf
    from slim2gguf.reference_decoder import decode

    slim = {t.name: t for t in open_gguf(slim_path).tensors}
    ref = {t.name: t for t in open_gguf(ref_path).tensors}
    if fused_ref_path is not None:
        fused = fused_blocks(slim_path)
        in_fused = lambda name: name.startswith("blk.") and int(name.split(".")[1]) in fused
        ref = {n: t for n, t in ref.items() if not (in_fused(n) and n.split(".")[2] in QKV_PARTS)}
        ref.update({t.name: t for t in open_gguf(fused_ref_path).tensors
                    if in_fused(t.name) and t.name.split(".")[2] == "attn_qkv"})
    assert set(slim) == set(ref)
    n = 0
    for name, t in slim.items():
        if not is_slim(t.tensor_type):
            continue
        want = np.asarray(ref[name].data, dtype=np.float32)
        assert ref[name].tensor_type.name == "F32"
        got = decode(t.data, int(t.shape[0]), t.tensor_type).reshape(want.shape)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
        n += 1
    return n
