"""End-to-end tuning of a SLIM file's group scales (`slim2gguf tune`): read the file's SLIM tensors as
QuantizedLinears in the model's row order (a fused attn_qkv split into q, k and v), train their (d, m) with
quant/e2e.py, write the file back with only the group headers changed (a fused tensor from its three parts' rows).

The output is the input file with the SLIM tensors' group headers rewritten in place: same size, same metadata,
same tensors otherwise, so it runs wherever the input does. Written to a temporary file beside the output and
renamed at the end.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .errors import SlimError
from .format import as_slim_type, is_slim, pack_rows, unpack_rows


def read_slim_linears(path: Path, model) -> dict[str, tuple]:
    """{model parameter name: (QuantizedLinear in the model's row order, tensor, row order)} for the file's SLIM
    tensors; row order[i] = the file row of the tensor that holds the model's row i. A fused attn_qkv gives three
    entries (q, k, v) on the same tensor, each with its own rows of it (gguf_torch.tensor_parts)."""
    import torch

    from quant.result import QuantizedLinear

    from .gguf_in import open_gguf
    from .gguf_torch import file_architecture, parameter_names, tensor_parts

    reader = open_gguf(path)
    arch = file_architecture(reader)
    by_gguf = parameter_names(model)
    out = {}
    for t in reader.tensors:
        if not is_slim(int(t.tensor_type)):
            continue
        st = as_slim_type(int(t.tensor_type))
        ne0 = int(t.shape[0])
        bits, q, d, m = unpack_rows(np.asarray(t.data), ne0, st)
        for name, order in tensor_parts(t.name, q.shape[0], model.config, arch):
            if name not in by_gguf:
                raise SlimError(f"{path}: SLIM tensor {t.name} has no parameter in the model")
            if order is None:
                order = np.arange(q.shape[0])
            ql = QuantizedLinear(torch.from_numpy(bits.astype(np.int8)), torch.from_numpy(q[order].copy()),
                                 torch.from_numpy(d[order].copy()), torch.from_numpy(m[order].copy()), st.group_size)
            out[by_gguf[name]] = (ql, t, order)
    if not out:
        raise SlimError(f"{path}: no SLIM tensors to tune")
    return out


def write_tuned(src: Path, dst: Path, linears: dict[str, tuple], tuned: dict) -> int:
    """Copy src to dst with each tuned tensor's bytes repacked in place (headers change, codes do not); a fused
    tensor from the rows of all its parts. Returns the number of parameters (linears) whose bytes changed."""
    tensors: dict[str, tuple] = {}    # file tensor -> (tensor, [(parameter, row order)])
    for name, (_, t, order) in linears.items():
        tensors.setdefault(t.name, (t, []))[1].append((name, order))
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    changed = 0
    try:
        with open(tmp, "r+b") as f:
            for t, parts in tensors.values():
                st, ne0 = as_slim_type(int(t.tensor_type)), int(t.shape[0])
                old = np.asarray(t.data).reshape(-1, st.row_bytes(ne0))
                rows = old.shape[0]
                q = np.empty((rows, ne0), dtype=np.uint8)
                d = np.empty((rows, ne0 // st.group_size), dtype=np.float16)
                m = np.empty_like(d)
                filled = np.zeros(rows, dtype=bool)
                bits = tuned[parts[0][0]].bits.cpu().numpy()
                for name, order in parts:   # file row order[i] holds the parameter's row i
                    ql = tuned[name]
                    if not np.array_equal(ql.bits.cpu().numpy(), bits):
                        raise SlimError(f"{t.name}: {name} has other group bit-widths than the rest of the tensor")
                    q[order], d[order], m[order] = (x.cpu().numpy() for x in (ql.q, ql.d, ql.m))
                    filled[order] = True
                if not filled.all():
                    raise SlimError(f"{t.name}: rows {np.flatnonzero(~filled)[:4].tolist()}... belong to no parameter")
                packed = pack_rows(bits, q, d, m, st)
                if packed.shape != old.shape:
                    raise SlimError(f"{t.name}: repacked size {packed.shape} != {old.shape}")
                f.seek(int(t.data_offset))
                f.write(packed.tobytes())
                changed += sum(int((packed[order] != old[order]).any()) for _, order in parts)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return changed


def heldout_note(info: dict) -> str:
    """', held-out KL a -> b (epoch k of n kept)' for a summary line; empty without held-out windows."""
    if "heldout" not in info:
        return ""
    return (f", held-out KL {info['heldout'][0]:.4f} -> {info['heldout_after']:.4f} "
            f"(epoch {info['kept_epoch']} of {info['epochs']} kept)")


def heldout_count(nwindows: int, heldout: int | None, flag: str = "--heldout") -> int:
    """Windows kept out of training to choose the epoch: `heldout`, or by default one in eight (none below 8)."""
    h = nwindows // 8 if heldout is None else heldout
    if h < 0 or (h and h >= nwindows):
        raise SlimError(f"{flag} {h}: must be >= 0 and leave windows to train on (of {nwindows})")
    return h


def tune_file(path: Path, model: str, output: Path, windows, epochs: int, lr: float | None = None,
              device: str | None = None, seed: int = 0, heldout: int | None = None) -> dict:
    """Train the (d, m) of every SLIM tensor of `path` end to end against `model` (the full-precision model the
    file was converted from) on `windows` (a quant.calibration.CalibrationSet); write `output` (may be `path`).
    `heldout` windows (heldout_count; the last ones that overlap no other window, quant.calibration.
    isolated_windows) are not trained on: the epoch with the lowest KL on them is kept. Returns the run's summary."""
    import torch

    from quant.calibration import isolated_windows
    from quant.e2e import DEFAULT_LR, train_scales

    from .gguf_torch import load_gguf_weights
    from .model_io import load_model

    t0 = time.time()
    if not path.is_file():
        raise SlimError(f"{path}: no such file")
    if epochs < 1:
        raise SlimError("tune epochs must be >= 1")
    ids = windows.input_ids
    held = isolated_windows(ids, heldout_count(ids.shape[0], heldout))
    train = [i for i in range(ids.shape[0]) if i not in held]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, _, _ = load_model(model)
    student, _, _ = load_model(model)
    load_gguf_weights(student, path)
    linears = read_slim_linears(path, student)
    params = dict(student.named_parameters())
    for name, (ql, t, _) in linears.items():   # the file decodes to what the student holds, bit for bit
        if not torch.equal(ql.dequantize(), params[name].data.float()):
            raise SlimError(f"{path}: {t.name} does not decode to the weights loaded for {name}")
    teacher.to(dev)
    student.to(dev)
    tuned, info = train_scales(student, teacher, {n: v[0] for n, v in linears.items()}, ids[train], epochs,
                               lr or DEFAULT_LR, seed=seed, heldout=ids[held] if held else None)
    changed = write_tuned(path, output, linears, tuned)
    info.update({"file": str(path), "output": str(output), "model": model, "tensors": len(linears),
                 "tensors_changed": changed, "calibration": windows.summary, "device": str(dev),
                 "seconds": round(time.time() - t0, 1)})
    return info
