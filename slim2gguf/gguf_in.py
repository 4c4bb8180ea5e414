"""Open a GGUF for reading: gguf-py's reader behind one-line errors, and metadata as plain Python values.

A missing, unreadable, corrupt or truncated file is a SlimError with one line (the CLI prints it, exit 2);
gguf-py's own exceptions (ValueError from numpy reshapes, IndexError, ...) never reach the user. The tensor data
layout is checked as llama.cpp's gguf.cpp checks it (each tensor at the aligned end of the one before), so a
changed shape or type id is refused here as it is there. The SLIM rows themselves are validated by their
readers (reference_decoder.validate / decode).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SlimError


@functools.lru_cache(maxsize=1)
def _reader_class():
    """gguf-py's GGUFReader, reading its fields through a plain ndarray view of the memory map.

    The reader parses every vocabulary entry with a few slices of its np.memmap, and slicing a memmap subclass
    costs several times a plain view of the same pages (each slice runs memmap's __array_finalize__): 2.6 s against
    0.8 s for SmolLM2's 49k tokens and merges, paid by every open. Same values, same shared pages; `data` stays the
    memmap (weights.py hands its pages back through it). `_get` is the one reader internal this replaces, as the
    pinned gguf-py (the vendored llama.cpp's) defines it; the whole suite reads files through it."""
    from gguf import GGUFReader

    itemsizes: dict = {}

    class Reader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            size = itemsizes.get(dtype) or itemsizes.setdefault(dtype, np.dtype(dtype).itemsize)
            count = int(count)
            arr = plain[offset:offset + size * count].view(dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return Reader


def open_gguf(path: Path):
    """GGUFReader for path; SlimError (one line) for a missing, unreadable, corrupt or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise SlimError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise SlimError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise SlimError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        reader = _reader_class()(path)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot reshape" in msg or "exceeds remaining" in msg:
            raise SlimError(f"{path}: truncated or corrupt GGUF ({msg})") from None
        raise SlimError(f"{path}: corrupt GGUF ({msg})") from None
    except (IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError) as e:
        raise SlimError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from None
    expected = 0  # relative to the data section; each tensor padded to the alignment (as gguf.cpp demands)
    align = int(reader.alignment)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise SlimError(f"{path}: truncated GGUF: tensor {t.name} ends at byte {end}, file has {size}")
        offs = int(t.data_offset) - int(reader.data_offset)
        if offs != expected:  # a changed shape or type changes a size: the layout llama.cpp checks breaks
            raise SlimError(f"{path}: corrupt GGUF: tensor {t.name} has data at offset {offs}, expected "
                            f"{expected} from the sizes of the tensors before it")
        expected += -(-int(t.n_bytes) // align) * align
    return reader


def source_reader(path: Path):
    """open_gguf for a conversion's source, parsed once per run: the architecture check, the tensor source and the
    metadata export share it (gguf-py parses every vocabulary entry of a file it opens: seconds for 50k tokens)."""
    path = Path(path).resolve()
    st = path.stat() if path.is_file() else None
    return _cached_reader(path, st.st_size if st else -1, st.st_mtime_ns if st else -1)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: Path, size: int, mtime_ns: int):
    return open_gguf(path)


def field_value(field) -> Any:
    """A reader field as a plain Python value (str, number, bool or list)."""
    v = field.contents()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def metadata(reader) -> dict[str, Any]:
    """Every key/value of the file except gguf-py's synthetic GGUF.* fields."""
    return {k: field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
