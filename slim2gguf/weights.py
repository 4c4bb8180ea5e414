"""A model's weights read one tensor at a time, so `convert` never holds the whole model (issue 15).

`open_weights(folder, gguf_file)` gives a WeightSource:
- a Hugging Face folder: its safetensors shards (model.safetensors.index.json or *.safetensors), memory-mapped by
  safetensors; each tensor is read and cast to fp32 when asked for;
- a GGUF: the tensors memory-mapped by gguf-py and dequantized one at a time, renamed and un-permuted by
  transformers' own GGUF name map and tensor processor, so the values are exactly what
  `from_pretrained(gguf_file=...)` gives, without its whole-model copy.

`LayerStream` builds the transformers model with its parameters on the meta device (accelerate's
init_empty_weights: no memory), fills in what every layer needs (embedding, final norm, head) and then one decoder
layer at a time: `acquire(i)` before the layer is quantized, `release(i)` after (its parameters go back to meta).
It counts what it holds, so tests can check the bound without measuring memory.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from .errors import SlimError

_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


class WeightSource:
    """HF parameter name -> fp32 tensor, read on demand. Subclasses fill `_shapes` and `_read`."""

    def __init__(self, label: str):
        self.label = label                       # for error messages (the model the user named)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.reads: Counter[str] = Counter()     # name -> times read (instrumentation)

    @property
    def names(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, name: str) -> bool:
        return name in self._shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        """The tensor as a new fp32 CPU tensor (check_finite has vetted the values)."""
        if name not in self._shapes:
            raise SlimError(f"{self.label}: no tensor {name}")
        self.reads[name] += 1
        return self._read(name).to(torch.float32)

    def check_finite(self) -> None:
        """Read every tensor once, keeping none, so a NaN or Inf anywhere fails the run before any work (the
        layers themselves come much later). Not counted in `reads`."""
        for name in self.names:
            if not torch.isfinite(self._read(name)).all():
                raise SlimError(f"{self.label}: weight {name} contains NaN or Inf")

    def _read(self, name: str) -> torch.Tensor:
        raise NotImplementedError


class SafetensorsWeights(WeightSource):
    """The safetensors shards of a Hugging Face folder (sharded or single file)."""

    def __init__(self, folder: Path, label: str):
        from safetensors import safe_open

        super().__init__(label)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise SlimError(f"{index}: unreadable shard index ({e})") from None
            shards = sorted(set(weight_map.values()))
        else:
            shards = sorted(p.name for p in folder.glob("*.safetensors"))
        if not shards:
            raise SlimError(f"{folder}: no safetensors weights (convert reads model*.safetensors)")
        self._paths, self._where = {}, {}
        for shard in shards:
            path = folder / shard
            if not path.is_file():
                raise SlimError(f"{folder}: shard {shard} named by the index is missing")
            try:
                f = safe_open(str(path), framework="pt")
            except Exception as e:  # noqa: BLE001 - a damaged shard is the user's file
                raise SlimError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
            self._paths[shard] = path
            for name in f.keys():
                self._where[name] = shard
                self._shapes[name] = tuple(f.get_slice(name).get_shape())
            del f

    def _read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        # a shard opened per read and closed after: a mapping kept open would keep every page read so far in
        # the process's resident memory (file-backed, but RSS all the same: the whole model by the last layer)
        with safe_open(str(self._paths[self._where[name]]), framework="pt") as f:
            return f.get_tensor(name).clone()


class GGUFWeights(WeightSource):
    """The tensors of a GGUF, as transformers' GGUF loader names and lays them out."""

    def __init__(self, path: Path, config, meta_model, label: str):
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        from .gguf_in import source_reader

        super().__init__(label)
        self._reader = source_reader(path)
        arch_field = self._reader.fields.get("general.architecture")
        arch = arch_field.contents() if arch_field is not None else "?"
        self._config = config.to_dict()
        self._processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=self._config)
        self._to_hf = _gguf_to_hf_names(meta_model, arch, self._processor)
        self.pages_dropped = 0      # tensors whose mapped pages went back to the kernel (instrumentation)
        self._tensors = {}
        for t in self._reader.tensors:
            hf = self._to_hf.get(t.name)
            if hf is None:           # e.g. rope_freqs: computed by the model, not a parameter
                continue
            self._tensors[hf] = t
            self._shapes[hf] = tuple(int(n) for n in reversed(t.shape))   # ggml's ne0 is the last HF axis

    def check_finite(self) -> None:
        """As WeightSource.check_finite, on the stored values: a float tensor's exponent bits are checked in place
        (a NaN or Inf has them all set; no fp32 copy), a quantized one is dequantized; tensors in parallel (numpy
        lets go of the GIL). The renaming and un-permuting `_read` does cannot make a value finite or not."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        def finite(t) -> bool:
            try:
                return _gguf_tensor_finite(t)
            finally:
                self._drop_pages(t)

        items = list(self._tensors.items())
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for (name, _), ok in zip(items, pool.map(lambda it: finite(it[1]), items)):
                if not ok:
                    raise SlimError(f"{self.label}: weight {name} contains NaN or Inf")

    def _drop_pages(self, t) -> None:
        """Hand the pages of tensor t's bytes in the memory map back to the kernel once they are read: otherwise
        every page read stays resident in this process (file-backed, but RSS all the same) and a conversion ends
        holding the whole source file. The next read of t maps them in again from the file."""
        import mmap

        mm = getattr(self._reader.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = t.data_offset // mmap.PAGESIZE * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, t.data_offset + t.n_bytes - start)
        self.pages_dropped += 1

    def _read(self, name: str) -> torch.Tensor:
        import gguf
        import numpy as np

        t = self._tensors[name]
        # F16/F32 go to the processor as stored and to fp32 in torch (all threads, exact); gguf-py's dequantize
        # would widen them in numpy on one thread: seconds per 7B layer
        stored = np.asarray(t.data) if t.tensor_type in _STORED_AS_IS else gguf.dequantize(t.data, t.tensor_type)
        result = self._processor.process(weights=stored, name=t.name, tensor_key_mapping=self._to_hf,
                                         parsed_parameters={"config": self._config, "tensors": {}})
        out = torch.from_numpy(np.array(result.weights, copy=True)).reshape(self._shapes[name]).float()
        self._drop_pages(t)
        return out


def _gguf_float_types() -> tuple[set, dict]:
    from gguf import GGMLQuantizationType as T
    import numpy as np

    # stored float types: (unsigned view, exponent mask); a value is NaN or Inf exactly when all are set
    return {T.F16, T.F32}, {T.F16: (np.uint16, 0x7C00), T.BF16: (np.uint16, 0x7F80), T.F32: (np.uint32, 0x7F800000)}


_STORED_AS_IS, _EXPONENT_BITS = _gguf_float_types()
_FINITE_CHUNK = 1 << 24     # elements per step of the exponent check: bounds the temporary


def _gguf_tensor_finite(t) -> bool:
    import gguf
    import numpy as np

    if t.tensor_type in _EXPONENT_BITS:
        view, mask = _EXPONENT_BITS[t.tensor_type]
        raw = np.asarray(t.data).reshape(-1).view(view)
        return not any(np.any((raw[i:i + _FINITE_CHUNK] & mask) == mask) for i in range(0, raw.size, _FINITE_CHUNK))
    return bool(np.isfinite(gguf.dequantize(t.data, t.tensor_type)).all())


def _gguf_to_hf_names(model, arch: str, processor) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, by gguf-py's name map for `arch`, as transformers'
    get_gguf_hf_weights_map maps a llama/mistral/qwen2 model (it also walks every submodule, building the map again
    for each: seconds of a load, and nothing those architectures need)."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise SlimError(f"GGUF architecture {arch!r} is unknown to gguf-py")
    name_map = gguf.get_tensor_name_map(by_name[arch], model.config.num_hidden_layers)
    out = {}
    for hf_name in model.state_dict():
        base, dot, suffix = processor.preprocess_name(hf_name).rpartition(".")
        if suffix not in ("weight", "bias"):
            base, dot, suffix = hf_name, "", ""
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            out[gguf_name + dot + suffix] = hf_name
    return out


def empty_model(folder: Path, gguf_file: str | None):
    """The transformers causal LM of the source's config, parameters on the meta device (buffers such as the
    rotary frequencies are real), in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise SlimError(f"cannot read the model config of {folder}: {str(e).splitlines()[0] if str(e) else e}")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def open_weights(folder: Path, gguf_file: str | None, model, label: str) -> WeightSource:
    if gguf_file:
        return GGUFWeights(Path(folder) / gguf_file, model.config, model, label)
    return SafetensorsWeights(Path(folder), label)


def layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.match(name)
    return int(m.group(1)) if m else None


class LayerStream:
    """A meta-device model whose decoder layers are filled in from a WeightSource one at a time.

    keep=True: `release` keeps the layer (the model ends fully loaded, holding whatever was written into it,
    e.g. fake-quant weights); otherwise a released layer's parameters go back to the meta device.
    """

    def __init__(self, model, weights: WeightSource, keep: bool = False):
        self.model, self.weights, self.keep = model, weights, keep
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        self.layer_params: dict[int, list[str]] = {}
        self.global_params: list[str] = []
        expected = [name for name, _ in model.named_parameters()]
        for name in expected:
            i = layer_index(name)
            (self.layer_params.setdefault(i, []) if i is not None else self.global_params).append(name)
        missing = sorted(n for n in expected if n not in weights and not (self.tied and n == "lm_head.weight"))
        if missing:
            raise SlimError(f"{weights.label}: {len(missing)} weight(s) missing, first {missing[0]}")
        for n in expected:
            if n in weights and tuple(weights.shape(n)) != tuple(model.get_parameter(n).shape):
                raise SlimError(f"{weights.label}: {n} has shape {weights.shape(n)}, the config says "
                                f"{tuple(model.get_parameter(n).shape)}")
        weights.check_finite()                   # before anything is loaded: a bad weight costs no minutes
        self.resident: set[int] = set()
        self.peak_resident = 0                   # most decoder layers held at once (instrumentation)
        self._load(self.global_params)
        if self.tied:
            model.tie_weights()

    def _load(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for n in names:
            if n in self.weights:
                set_module_tensor_to_device(self.model, n, "cpu", value=self.weights.get(n))

    def acquire(self, i: int) -> None:
        if i in self.resident:
            return
        self._load(self.layer_params.get(i, []))
        self.resident.add(i)
        self.peak_resident = max(self.peak_resident, len(self.resident))

    def release(self, i: int) -> None:
        from accelerate.utils import set_module_tensor_to_device

        if self.keep or i not in self.resident:
            return
        for n in self.layer_params.get(i, []):
            set_module_tensor_to_device(self.model, n, "meta")
        self.resident.discard(i)

    def acquire_all(self) -> Callable[[], None]:
        """Load every layer (a bit budget's measurement runs the whole model); returns the matching release."""
        before = set(self.resident)
        for i in sorted(self.layer_params):
            self.acquire(i)

        def release_all():
            for i in sorted(self.resident - before):
                self.release(i)
        return release_all
