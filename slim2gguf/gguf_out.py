"""Write a GGUF with llama.cpp's own converter, putting SLIM rows in place of the quantized linear weights.

The vendored convert_hf_to_gguf.py (its `conversion` package, in the patched llama.cpp tree) reads an HF folder
and writes metadata, tokenizer, chat template and tensor names exactly as it does for an F16 file. Hooks on a
subclass of the architecture's converter class change only what SLIM needs:

- modify_tensors: for a quantized weight, a row-index tensor goes through the converter's own modify_tensors
  instead of the weight, which tells the GGUF name and the row order it writes (the llama q/k RoPE permutation
  reorders rows only; SLIM tags are per column group, so permuting q/d/m rows is exact), and a 1x1 placeholder
  goes on. With fuse_qkv the converter's own q/k/v fusion (convert_hf_to_gguf.py --fuse-qkv) is on for the
  layers whose q, k and v are SLIM with one type and one bit map (every row of a SLIM tensor carries the same
  tags): it holds the three index tensors (offset so each row of q, k, v has its own index) until the last comes
  and writes `blk.N.attn_qkv.weight` (q rows, RoPE-permuted, then k, permuted, then v), its biases (qwen2) as
  `blk.N.attn_qkv.bias`; the fused index tells which row of which part each file row holds.
- prepare_qkv_fusion: narrows the converter's fusable layers to those (a layer's bit maps are compared when its
  first tensor comes, from the layer's checkpoint the writer reads then anyway).
- gguf_writer.add_tensor: the placeholder is swapped for a BytesWhenWritten with raw_dtype = the SLIM type: the
  rows are packed (format.pack_quantized) and validated (reference_decoder.validate) when the writer writes
  that tensor, so the file's packed rows are never all in memory.
- tensor_force_quant: stock types for what SLIM does not hold (token_embd / output / unquantized linears);
  norms and other 1-D tensors stay F32 through the converter's own rule.
general.file_type becomes MOSTLY_SLIM2 / MOSTLY_SLIM3 and `slim.*` keys carry the settings (`slim_metadata`).
`write_slim_gguf_atomic` writes OUT.partial and renames it, so OUT is never a half-written file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from .errors import SlimError
from .format import FORMAT_VERSION, Keys, pack_quantized, slim_type
from .llama_converter import converter_class, quiet_converter

if TYPE_CHECKING:
    from quant.config import QuantConfig

# stock types the converter (gguf-py) can write; llama-quantize's Q6_K/Q4_K are not in gguf-py's quantizer
STOCK_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
DEFAULT_EMBD_TYPE = "q8_0"      # token_embd (llama-quantize: Q2_K..Q4_K for low-bit mixes; Q8_0 is the
DEFAULT_OUTPUT_TYPE = "q8_0"    # output      closest gguf-py can write; llama-quantize uses Q6_K)
DEFAULT_FALLBACK_TYPE = "q8_0"  # linear weights SLIM cannot hold (width not divisible by 64); F16 if %32 != 0


def _qtype(name: str):
    import gguf
    try:
        return gguf.GGMLQuantizationType[name.upper()]
    except KeyError:
        raise SlimError(f"unknown tensor type {name!r} (choose from {', '.join(STOCK_TYPES)})") from None


@dataclass
class StockTypes:
    """Types for the tensors SLIM does not hold (names as in STOCK_TYPES)."""

    token_embd: str = DEFAULT_EMBD_TYPE
    output: str = DEFAULT_OUTPUT_TYPE
    fallback: str = DEFAULT_FALLBACK_TYPE

    def __post_init__(self):
        for v in (self.token_embd, self.output, self.fallback):
            if v.lower() not in STOCK_TYPES:
                raise SlimError(f"unsupported stock type {v!r} (choose from {', '.join(STOCK_TYPES)})")


@dataclass
class WrittenTensor:
    name: str            # GGUF name
    hf_name: str | None  # source name (None for generated tensors and for fused ones: see parts)
    type: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    n_bytes: int
    parts: tuple[tuple[str, int], ...] = ()   # a fused tensor (attn_qkv): (source name, rows) of q, k, v, in the
                                              # order their rows are stacked for row_perm


@dataclass
class WriteReport:
    tensors: list[WrittenTensor] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # 2-D weights written as stock types (not SLIM)
    # GGUF name -> source row of each row (a SLIM tensor); for a fused tensor the row of its parts stacked
    # [q; k; v] (WrittenTensor.parts): file row i holds row row_perm[i] of that stack
    row_perm: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# a stock file (the reference for comparisons)


def write_stock(hf_dir: Path, out_path: Path, outtype: str = "f16", *, model_name: str | None = None,
                metadata_override: Path | None = None, verbose: bool = False, fuse_qkv: bool = False) -> Path:
    """What `convert_hf_to_gguf.py --outtype OUTTYPE [--fuse-qkv]` writes (the reference file for comparisons)."""
    import gguf
    import torch
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    cls = converter_class(hf_dir)
    with quiet_converter(verbose), torch.inference_mode():
        model = cls(Path(hf_dir), ftype, Path(out_path), model_name=model_name,
                    metadata_override=metadata_override, fuse_qkv=fuse_qkv)
        model.write()
    return Path(out_path)


def check_converter_vocab(hf_dir: Path, verbose: bool = False) -> None:
    """Let llama.cpp's converter read the folder's config and tokenizer now (it writes nothing): a tokenizer it
    does not recognize fails in seconds, not after the whole quantization."""
    import gguf
    base = converter_class(hf_dir)

    class VocabOnly(base):
        model_arch = base.model_arch

        def index_tensors(self, remote_hf_model_id: str | None = None) -> dict:
            return {}     # the tensors are not read here (a GGUF source's folder has none)

    with quiet_converter(verbose):
        VocabOnly(Path(hf_dir), gguf.LlamaFileType.MOSTLY_F16, Path(hf_dir) / "unused.gguf").set_vocab()


# --------------------------------------------------------------------------------------------------------------
# the SLIM writer


def slim_metadata(config: QuantConfig, calibration: Mapping[str, Any] | None, source_name: str,
                  group_sizes: Iterable[int]) -> dict[str, Any]:
    """The `slim.*` keys of a file (docs/format.md), in the order they are written (config.fuse_qkv: q/k/v written
    fused where their types and bit maps coincide, `convert` passes it to the writer; config.joint_qkv: SBA gave
    them one map, so they coincide in every layer where their types do).

    calibration: the calibration summary (source, nsamples, seqlen, tokens, seed); None when RTN needed none.
    group_sizes: the group sizes the file's SLIM tensors use."""
    meta: dict[str, Any] = {
        Keys.FORMAT_VERSION: FORMAT_VERSION,
        Keys.BITS: config.bits,
        Keys.GROUP_SIZE: config.group_size,
        Keys.GROUP_SIZES: sorted(set(int(g) for g in group_sizes)),
        Keys.METHOD: config.method,
        Keys.SBA: config.sba,
        Keys.SQC: config.sqc,
        Keys.FUSE_QKV: config.fuse_qkv,
        Keys.JOINT_QKV: config.joint_qkv,
        Keys.SEED: config.seed,
        Keys.SOURCE: source_name,
    }
    if calibration:
        for key in ("source", "nsamples", "seqlen", "tokens", "seed"):
            if key in calibration:
                meta[Keys.Calibration.PREFIX + key] = calibration[key]
    else:
        meta[Keys.Calibration.SOURCE] = "none (rtn)"
    return meta


def _metadata_adder(writer, key: str, value: Any):
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if 0 <= value < 2**32 else writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"metadata {key}: cannot store {type(value).__name__}")


def _source_tensors(converter, weights) -> dict:
    """The converter's tensor index over a weights.WeightSource instead of the folder's files: lazy tensors that
    read (and dequantize) one source tensor when the converter materializes it. A quantized weight is never
    read: its SLIM rows replace it (modify_tensors uses its shape only)."""
    import torch

    from .llama_converter import import_conversion

    lazy = import_conversion().LazyTorchTensor
    index = {}
    for name in weights.names:
        gen = (lambda n=name: lazy(meta=lazy.meta_with_dtype_and_shape(torch.float32, weights.shape(n)),
                                   args=(n,), func=weights.get))
        if item := converter.filter_tensors((name, gen)):
            index[item[0]] = item[1]
    return index


class BytesWhenWritten:
    """A packed tensor as gguf-py's writer sees it until it writes: shape, dtype and size now, the bytes made by
    `make()` only in `tofile`, one tensor at a time. The writer holds every tensor from the converter's pass
    until it writes the file: with the packed rows themselves that was the file's size in memory (20 GB for a
    70B); this way it is one tensor's (its codes read back from the layer checkpoint)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, shape: tuple[int, int], make: Callable[[], np.ndarray]):
        self.shape, self._make = shape, make
        self.nbytes = int(np.prod(shape))

    def tofile(self, fout) -> None:
        data = self._make()
        if data.shape != self.shape or data.dtype != self.dtype:
            raise SlimError(f"packed tensor is {data.dtype} {data.shape}, its header says uint8 {self.shape}")
        data.tofile(fout)


def qkv_fusable(qls: list) -> bool:
    """Whether q, k and v (QuantizedLinears) can be one SLIM tensor: one type (average bits, group size, width) and
    one bit map, since every row of a SLIM tensor carries the same tags. The one place this rule lives."""
    import torch

    kinds = {(round(ql.avg_bits), ql.group_size, ql.shape[1]) for ql in qls}
    return len(kinds) == 1 and all(torch.equal(ql.bits.cpu(), qls[0].bits.cpu()) for ql in qls[1:])


def _stacked(qls: list) -> Any:
    """QuantizedLinears with one bit map and group size as one, their rows stacked in the given order."""
    import torch

    from quant.result import QuantizedLinear

    if not qkv_fusable(qls):
        raise SlimError("q/k/v fused with different types or bit maps: every row of a SLIM tensor carries the same "
                        "tags")
    first = qls[0]
    return QuantizedLinear(first.bits.cpu(), *(torch.cat([getattr(ql, f).cpu() for ql in qls]) for f in "qdm"),
                           first.group_size)


def _hooked_class(base, quantized: Mapping[str, Any], avg_bits: int, stock: StockTypes,
                  slim_meta: Mapping[str, Any], report: WriteReport, plan=None, weights=None):
    """A subclass of the converter class `base` that writes SLIM rows for the quantized weights, and (plan: a
    bit_plan.Plan) the planned stock type of each tensor the plan did not give to SLIM, quantized by ggml's own
    quantizer with the plan's importance vector (what llama-quantize writes with that imatrix). weights: a
    weights.WeightSource the tensors come from (a GGUF source) instead of the folder's safetensors. Constructed
    with fuse_qkv=True, it fuses the q/k/v of the layers where all three are SLIM with one type and bit map."""
    from . import ggml_quants
    from .format import Keys

    planned_stock = plan.stock() if plan is not None else {}
    import gguf
    import torch

    from . import reference_decoder

    target_ftype = gguf.LlamaFileType.MOSTLY_SLIM2 if avg_bits == 2 else gguf.LlamaFileType.MOSTLY_SLIM3
    placeholder = torch.zeros(1, 1, dtype=torch.float16)
    qkv_types = (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K, gguf.MODEL_TENSOR.ATTN_V)   # the fused order

    class SlimConverter(base):
        model_arch = base.model_arch  # TextModel.__init_subclass__ wants it in the class dict

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._slim_pending: dict[str, tuple[np.ndarray, Any]] = {}
            self._slim_hf_names: dict[str, str] = {}
            self._slim_parts: dict[str, tuple[tuple[str, int], ...]] = {}   # fused GGUF name -> its parts
            self._slim_written: set[str] = set()
            self._qkv_names: dict[int, list[str]] = {}    # block -> source names of its SLIM q, k, v weights
            self._qkv_undecided: set[int] = set()         # blocks whose bit maps are not compared yet
            self._qkv_offset: dict[str, int] = {}         # fused q/k/v weight -> its first row in [q; k; v]
            self._qkv_held: dict[tuple[int, str], list] = {}   # (block, suffix) -> (type, name, rows) held
            self._part_names: dict[str, str] = {}         # source name of a fused part -> its own GGUF name
            inner_add = self.gguf_writer.add_tensor

            def add_tensor(name, tensor, raw_shape=None, raw_dtype=None, tensor_endianess=None):
                if name in self._slim_pending:
                    tensor, raw_dtype = self._slim_pending.pop(name)
                    raw_shape = None
                    self._slim_written.add(name)
                inner_add(name, tensor, raw_shape=raw_shape, raw_dtype=raw_dtype, tensor_endianess=tensor_endianess)
                info = self.gguf_writer.tensors[-1][name]
                report.tensors.append(WrittenTensor(name, self._slim_hf_names.get(name), info.dtype.name,
                                                    tuple(int(s) for s in info.shape), int(info.nbytes),
                                                    self._slim_parts.get(name, ())))

            self.gguf_writer.add_tensor = add_tensor

        def index_tensors(self, remote_hf_model_id: str | None = None) -> dict:
            if weights is None:
                return super().index_tensors(remote_hf_model_id)
            return _source_tensors(self, weights)

        def sources(self) -> set[str]:
            """The source names of everything written so far (fused tensors: each of their parts)."""
            return set(self._slim_hf_names.values()) | {n for p in self._slim_parts.values() for n, _ in p}

        def _qkv_type(self, name: str):
            """(ATTN_Q/K/V, its own GGUF name) for a q/k/v weight or bias source name, else None."""
            mapped = self.tensor_map.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
            return mapped if mapped is not None and mapped[0] in qkv_types else None

        def prepare_qkv_fusion(self):
            """The converter's choice (the layers that have q, k, v, and biases for all three or none), narrowed to
            the layers whose q, k and v are all SLIM; their bit maps are compared when the layer's first tensor
            comes (_decide_qkv), so the layer's checkpoint is read once for the writer's pass anyway."""
            super().prepare_qkv_fusion()
            if not self._fusable_qkv_weight_layers:
                return
            parts: dict[int, dict] = {}
            for name in quantized:          # names only: nothing is read here
                mapped = self._qkv_type(name)
                if mapped is None or not mapped[1].endswith(".weight"):
                    continue
                bid = next((int(p) for p in mapped[1].split(".") if p.isdecimal()), None)
                parts.setdefault(bid, {})[mapped[0]] = name
            self._qkv_names = {bid: [p[t] for t in qkv_types] for bid, p in parts.items()
                               if len(p) == 3 and bid in self._fusable_qkv_weight_layers}
            self._fusable_qkv_weight_layers &= set(self._qkv_names)
            self._fusable_qkv_bias_layers &= self._fusable_qkv_weight_layers
            self._qkv_undecided = set(self._fusable_qkv_weight_layers)

        def _decide_qkv(self, bid: int) -> None:
            """Fuse block bid's q/k/v only if they are one SLIM type with one bit map (a bit budget may give them
            different average bits; per-tensor SBA, the default, different maps; `--joint-qkv` one map): otherwise
            the converter writes them (and their biases) as three tensors."""
            self._qkv_undecided.discard(bid)
            names = self._qkv_names[bid]
            qls = [quantized[n] for n in names]
            if not qkv_fusable(qls):
                self._fusable_qkv_weight_layers.discard(bid)
                self._fusable_qkv_bias_layers.discard(bid)
                return
            offset = 0
            for n, ql in zip(names, qls):
                self._qkv_offset[n] = offset
                offset += ql.shape[0]

        def _hold_part(self, name: str, bid: int | None, rows: int, outs: list) -> tuple | None:
            """Bookkeeping of the converter's fusion for a q/k/v weight or bias of a fused block: the parts it holds
            until the last one; returns ((source name, rows) of q, k, v) when `outs` is the fused tensor."""
            suffix = ".bias" if name.endswith(".bias") else ".weight"
            fused = self._fusable_qkv_bias_layers if suffix == ".bias" else self._fusable_qkv_weight_layers
            mapped = self._qkv_type(name) if bid in fused else None
            if mapped is None:
                return None
            self._part_names[name] = mapped[1]
            held = self._qkv_held.setdefault((bid, suffix), [])
            held.append((qkv_types.index(mapped[0]), name, rows))
            if not outs:
                return None
            del self._qkv_held[(bid, suffix)]
            if sorted(t for t, _, _ in held) != [0, 1, 2]:
                raise SlimError(f"block {bid}: the converter fused {[n for _, n, _ in held]} as q/k/v")
            return tuple((n, r) for _, n, r in sorted(held))

        def modify_tensors(self, data_torch, name: str, bid: int | None) -> Iterable[tuple[str, Any]]:
            if bid in self._qkv_undecided:
                self._decide_qkv(bid)
            ql = quantized.get(name)
            if name in planned_stock:
                t = planned_stock[name]
                imp = plan.importance.get(name)
                for new_name, data in super().modify_tensors(data_torch, name, bid):
                    if len(data.shape) != 2:
                        raise SlimError(f"{name}: the plan gives it {t}, but the converter writes it "
                                        f"{len(data.shape)}-D")
                    rows, cols = (int(n) for n in data.shape)
                    rb = ggml_quants.row_bytes(t, cols)
                    if rb is None:
                        raise SlimError(f"type {t} cannot hold rows of {cols} weights ({name})")

                    def quantize_now(data=data, t=t, imp=imp):
                        if hasattr(type(data), "to_eager"):     # the converter's lazy tensors: the values, now
                            data = type(data).to_eager(data)
                        return ggml_quants.quantize(t, data.float().numpy(), imp)   # row permutations keep
                    self._slim_pending[new_name] = (BytesWhenWritten((rows, rb), quantize_now),  # the columns'
                                                    ggml_quants.qtype(t))                       # importance
                    self._slim_hf_names[new_name] = name
                    yield new_name, placeholder
                return
            if ql is None:
                outs = list(super().modify_tensors(data_torch, name, bid))
                parts = self._hold_part(name, bid, int(data_torch.shape[0]), outs)
                for new_name, data in outs:
                    if parts is not None:       # a fused bias (qwen2): q, k, v concatenated
                        self._slim_parts[new_name] = parts
                    else:
                        self._slim_hf_names[new_name] = name
                    yield new_name, data
                return
            rows, cols = ql.shape
            if tuple(data_torch.shape) != (rows, cols):
                raise SlimError(f"{name}: quantized shape {(rows, cols)} != model's {tuple(data_torch.shape)}")
            # row indices, offset by the part's place in [q; k; v] when the converter fuses this one (float32 holds
            # them exactly up to 2^24 rows)
            offset = self._qkv_offset.get(name, 0)
            index = (offset + torch.arange(rows, dtype=torch.float32))[:, None].expand(rows, cols).contiguous()
            outs = list(super().modify_tensors(index, name, bid))
            parts = self._hold_part(name, bid, rows, outs) if name in self._qkv_offset else None
            if name in self._qkv_offset and parts is None:
                if outs:
                    raise SlimError(f"{name}: the converter wrote a fused q/k/v part on its own")
                return             # held by the converter until the last of q, k, v comes
            total = sum(r for _, r in parts) if parts else rows
            if len(outs) != 1 or tuple(outs[0][1].shape) != (total, cols):
                raise SlimError(f"{name}: llama.cpp's converter reshapes this tensor; SLIM cannot follow it")
            new_name, moved = outs[0]
            perm = moved[:, 0].round().long()
            if not (torch.equal(moved, moved[:, :1].expand(total, cols))
                    and torch.equal(torch.sort(perm).values, torch.arange(total))):
                raise SlimError(f"{name}: llama.cpp's converter does more than reorder rows; SLIM cannot follow it")
            st = slim_type(round(ql.avg_bits), ql.group_size)   # a bit budget mixes SLIM2 and SLIM3 tensors
            p = perm.numpy()
            sources = tuple(n for n, _ in parts) if parts else (name,)

            def pack_now(sources=sources, st=st, p=p, new_name=new_name, cols=cols):
                # read back from the layer's file now; a fused tensor's parts stacked [q; k; v] as the index was
                ql = quantized[sources[0]] if len(sources) == 1 else _stacked([quantized[n] for n in sources])
                packed = pack_quantized(ql, st, row_order=p)
                reference_decoder.validate(packed, cols, st, new_name)
                return packed
            self._slim_pending[new_name] = (BytesWhenWritten((total, st.row_bytes(cols)), pack_now), st.ggml_type)
            if parts:
                self._slim_parts[new_name] = parts
            else:
                self._slim_hf_names[new_name] = name
            report.row_perm[new_name] = p
            yield new_name, placeholder

        def tensor_force_quant(self, name, new_name, bid, n_dims):
            if new_name in self._slim_pending:
                return gguf.GGMLQuantizationType.F16  # the placeholder; add_tensor swaps in the SLIM rows
            if self.match_model_tensor_name(new_name, gguf.MODEL_TENSOR.TOKEN_EMBD, bid):
                return _qtype(stock.token_embd)
            if self.match_model_tensor_name(new_name, gguf.MODEL_TENSOR.OUTPUT, bid):
                return _qtype(stock.output)
            if n_dims >= 2 and new_name.endswith(".weight"):
                report.fallbacks.append(new_name)
                return _qtype(stock.fallback)
            return super().tensor_force_quant(name, new_name, bid, n_dims)

        def set_gguf_parameters(self):
            self.ftype = target_ftype  # prepare_tensors ran with MOSTLY_F16; the file says SLIM
            super().set_gguf_parameters()
            for key, value in slim_meta.items():
                _metadata_adder(self.gguf_writer, key, value)
            if plan is not None:
                # a fused q/k/v part is listed under its own name (blk.N.attn_q.weight ...): the plan chose its type
                by_hf = {**{hf: g for g, hf in self._slim_hf_names.items()}, **self._part_names}
                names = sorted(plan.types, key=lambda n: by_hf.get(n, n))
                self.gguf_writer.add_float32(Keys.Plan.TARGET_BPW, float(plan.target_bpw))
                self.gguf_writer.add_array(Keys.Plan.TENSORS, [by_hf.get(n, n) for n in names])
                self.gguf_writer.add_array(Keys.Plan.TYPES, [plan.types[n] for n in names])
                self.gguf_writer.add_array(Keys.Plan.PREDICTED_LOSS, [float(plan.losses[n]) for n in names])

    return SlimConverter


def write_slim_gguf(hf_dir: Path, out_path: Path, quantized: Mapping[str, Any], *, avg_bits: int,
                    stock: StockTypes | None = None, slim_meta: Mapping[str, Any] | None = None, plan=None,
                    model_name: str | None = None, metadata_override: Path | None = None,
                    weights=None, verbose: bool = False, fuse_qkv: bool = True) -> WriteReport:
    """Write out_path (directly; the caller handles temp files) from an HF folder and QuantizedLinear results.

    quantized: HF parameter name -> QuantizedLinear (bits shared by all rows, group_size 64 or 128).
    slim_meta: extra `slim.*` key/values. Non-quantized tensors are read from hf_dir (or weights) by the converter.
    plan: a bit_plan.Plan (`--target-bpw`): its stock tensors in their planned types, the plan in `slim.plan.*`.
    model_name / metadata_override: as convert_hf_to_gguf.py's --model-name / --metadata.
    weights: a weights.WeightSource for the tensors (a GGUF source: hf_dir then holds config and tokenizer only).
    fuse_qkv: each layer whose q, k and v are SLIM with one type and one bit map gets one `blk.N.attn_qkv.weight`
    (and `attn_qkv.bias`) instead of three tensors (llama.cpp then runs one mat-vec for the three); False: the
    separate tensors everywhere.
    """
    import gguf
    import torch

    stock = stock or StockTypes()
    report = WriteReport()
    cls = _hooked_class(converter_class(hf_dir), quantized, avg_bits, stock, dict(slim_meta or {}), report, plan,
                        weights)
    with quiet_converter(verbose), torch.inference_mode():
        model = cls(Path(hf_dir), gguf.LlamaFileType.MOSTLY_F16, Path(out_path), model_name=model_name,
                    metadata_override=metadata_override, fuse_qkv=fuse_qkv)
        model.prepare_tensors()
        model.prepare_metadata(vocab_only=False)
        missing = sorted((set(quantized) | set(plan.stock() if plan else ())) - model.sources())
        if missing or model._slim_pending:
            raise SlimError(f"quantized tensors not written by the converter: {missing or sorted(model._slim_pending)}")
        model.gguf_writer.write_header_to_file(path=Path(out_path))
        model.gguf_writer.write_kv_data_to_file()
        model.gguf_writer.write_tensors_to_file(progress=verbose)
        model.gguf_writer.close()
    return report


def write_slim_gguf_atomic(hf_dir: Path, out_path: Path, quantized: Mapping[str, Any], **kwargs) -> WriteReport:
    """write_slim_gguf into OUT.partial, renamed to out_path when complete; SlimError when it cannot be written.
    The partial file never outlives a failure."""
    out_path = Path(out_path)
    tmp = atomic_output(out_path)
    try:
        report = write_slim_gguf(hf_dir, tmp, quantized, **kwargs)
        os.replace(tmp, out_path)
    except OSError as e:
        raise SlimError(f"cannot write {out_path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return report


def atomic_output(out_path: Path) -> Path:
    """The temporary path next to out_path that a conversion writes before renaming (same directory)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial")


def check_writable(out_path: Path) -> None:
    """Fail early (before minutes of quantization) if the output cannot be written."""
    out_path = Path(out_path)
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if out_path.is_dir():
        raise SlimError(f"output path {out_path} is a directory")
    if not parent.is_dir():
        raise SlimError(f"output directory {parent} does not exist")
    probe = atomic_output(out_path)
    try:
        with open(probe, "ab"):
            pass
        probe.unlink()
    except OSError as e:
        raise SlimError(f"output path {out_path} is not writable: {e.strerror or e}") from None
    if out_path.exists() and not os.access(out_path, os.W_OK):
        raise SlimError(f"output path {out_path} is not writable")
