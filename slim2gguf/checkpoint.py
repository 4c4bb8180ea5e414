"""Per-layer checkpoints of a conversion, so an interrupted `convert` can `--resume` without redoing layers.

Layout of OUT.ckpt/ (next to the output file):
    manifest.json        {"version": 2, "settings": {...}}: everything that decides the quantized numbers
                         (the QuantConfig, the calibration, the source model's files, the device)
    calibration.pt       the calibration token ids and their summary (self-generated text is not re-sampled)
    layer_00012.pt       {hf name: QuantizedLinear.state()} of one finished decoder layer
    hf/                  a GGUF source's config and tokenizer as an HF folder (llama.cpp's converter reads them;
                         the tensors it reads from the GGUF itself)
Every file is written to a temporary name and renamed, so a kill leaves either the old or the new file.
Resuming with different settings is refused (one line naming the first differing setting).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import SlimError

MANIFEST_VERSION = 2   # 2: settings keyed by QuantConfig.key()


def file_fingerprint(path: Path) -> dict[str, Any]:
    """A file's resolved path, and its name, size and mtime: changes when the file does."""
    path = Path(path)
    return {"path": str(path.resolve()), "files": _fingerprint([path])}


def model_fingerprint(folder: Path, gguf_file: str | None) -> dict[str, Any]:
    """The source model's files (a GGUF file, or a folder's config/weights/tokenizer model) as file_fingerprint."""
    folder = Path(folder)
    if gguf_file:
        files = [folder / gguf_file]
    else:
        files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".model")]
    return {"path": str(folder.resolve() / (gguf_file or "")), "files": _fingerprint(files)}


def _fingerprint(paths: list[Path]) -> list[list]:
    out = []
    for p in sorted(paths):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def checkpoint_dir(out_path: Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".ckpt")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _torch_save_atomic(obj: Any, path: Path) -> None:
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class Checkpoints:
    """The checkpoint directory of one conversion."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))

    # ---------------------------------------------------------------------------------------------- life cycle
    def open(self, resume: bool) -> int:
        """Prepare the directory. resume=False starts fresh (old checkpoints are removed); resume=True checks
        the manifest and keeps what is there. Returns the number of finished layers found."""
        manifest = self.path / "manifest.json"
        if resume and manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError) as e:
                raise SlimError(f"cannot resume: {manifest} is unreadable ({e})") from None
            if old.get("version") != MANIFEST_VERSION:
                raise SlimError(f"cannot resume: {manifest} has version {old.get('version')}, "
                                f"expected {MANIFEST_VERSION}")
            prev = old.get("settings", {})
            for key in sorted(set(prev) | set(self.settings)):
                if prev.get(key) != self.settings.get(key):
                    raise SlimError(f"cannot resume: setting '{key}' was {prev.get(key)!r}, now "
                                    f"{self.settings.get(key)!r} (run without --resume to start over)")
            return len(self.finished_layers())
        if self.path.exists():
            self.remove()
        try:
            self.path.mkdir(parents=True)
            atomic_write_bytes(manifest, (json.dumps({"version": MANIFEST_VERSION, "settings": self.settings},
                                                      indent=1, sort_keys=True) + "\n").encode())
        except OSError as e:
            raise SlimError(f"cannot write checkpoints to {self.path}: {e.strerror or e}") from None
        return 0

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- calibration
    def save_calibration(self, calibration) -> None:
        """calibration: a quant.calibration.CalibrationSet."""
        _torch_save_atomic({"input_ids": calibration.input_ids.cpu(), "summary": dict(calibration.summary)},
                           self.path / "calibration.pt")

    def load_calibration(self):
        """The CalibrationSet saved by save_calibration, or None."""
        import torch

        from quant.calibration import CalibrationSet
        p = self.path / "calibration.pt"
        if not p.is_file():
            return None
        obj = torch.load(p, weights_only=True)
        return CalibrationSet(obj["input_ids"], obj["summary"])

    # ---------------------------------------------------------------------------------------------- bit budget
    def save_plan(self, plan) -> None:
        """plan: a bit_plan.Plan (measured before the first layer: a resume does not measure again)."""
        from .bit_plan import save_plan_file
        save_plan_file(plan, self.path / "plan.json")

    def load_plan(self):
        from .bit_plan import Plan
        p = self.path / "plan.json"
        if not p.is_file():
            return None
        try:
            return Plan.from_state(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise SlimError(f"checkpoint {p} is unreadable ({e}); run without --resume") from None

    # ---------------------------------------------------------------------------------------------- layers
    def _layer_path(self, index: int) -> Path:
        return self.path / f"layer_{index:05d}.pt"

    def finished_layers(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.path.glob("layer_*.pt"))

    def save_layer(self, index: int, layer: dict[str, Any]) -> None:
        """layer: {hf name: QuantizedLinear}."""
        _torch_save_atomic({name: ql.state() for name, ql in layer.items()}, self._layer_path(index))

    def load_layer(self, index: int) -> dict[str, Any]:
        import torch

        from quant.result import QuantizedLinear
        try:
            obj = torch.load(self._layer_path(index), weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint is the user's to delete
            raise SlimError(f"checkpoint {self._layer_path(index)} is unreadable ({type(e).__name__}); "
                            f"run without --resume") from None
        return {name: QuantizedLinear.from_state(v) for name, v in obj.items()}

    def load_layers(self) -> StoredLayers:
        """The finished layers, each read from its file when asked for (a resume holds one at a time)."""
        return StoredLayers(self, self.finished_layers())

    # ---------------------------------------------------------------------------------------------- hf export
    @property
    def hf_dir(self) -> Path:
        """Where a GGUF source's HF folder is exported (hf_export.converter_input), so a resume reuses it."""
        return self.path / "hf"


class StoredLayers(Mapping):
    """{layer index: {hf name: QuantizedLinear}} over the layer files of a Checkpoints, read on access."""

    def __init__(self, ck: Checkpoints, indices: list[int]):
        self._ck, self._indices = ck, list(indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._indices:
            raise KeyError(index)
        return self._ck.load_layer(index)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


class StoredResults(Mapping):
    """{hf name: QuantizedLinear} of a conversion, read back from the layer files as the writer asks for them (the
    last layer read is kept), so the codes of all layers (a byte per weight: 65 GB for a 70B) are never in memory
    together. Readable while the checkpoint folder exists. `extra`: results that have no layer file (a SLIM
    embedding, made before the first layer)."""

    def __init__(self, ck: Checkpoints, extra: Mapping[str, Any] | None = None):
        self._ck = ck
        self._extra = dict(extra or {})
        self._layer_of: dict[str, int] = {}
        self._cached: tuple[int | None, dict[str, Any]] = (None, {})

    def add_layer(self, index: int, names) -> None:
        """The layer file `index` holds these names (saved by Checkpoints.save_layer)."""
        for n in names:
            self._layer_of[n] = index

    def add(self, name: str, value: Any) -> None:
        self._extra[name] = value

    def __getitem__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        index = self._layer_of[name]
        if self._cached[0] != index:
            self._cached = (index, self._ck.load_layer(index))
        return self._cached[1][name]

    def __iter__(self) -> Iterator[str]:
        yield from self._extra
        yield from self._layer_of

    def __len__(self) -> int:
        return len(self._extra) + len(self._layer_of)
