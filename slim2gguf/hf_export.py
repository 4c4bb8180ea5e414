"""The HF folder llama.cpp's converter reads. An HF source is used as it is; for a GGUF source its config and
tokenizer are written out as an HF folder (the tensors come from the GGUF itself, gguf_out), with its descriptive
general.* fields kept for the converter's --metadata override so the output carries the source's name, license...
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METADATA_FILE = "slim2gguf-metadata.json"   # the converter's --metadata file inside an exported folder
COMPLETE_MARK = ".complete"                 # written last: a folder without it is re-exported

# general.* fields of a GGUF source that describe the model (not the file) and so carry over
_DESCRIPTIVE_KEYS = ("general.name", "general.author", "general.version", "general.organization",
                     "general.finetune", "general.basename", "general.description", "general.license",
                     "general.license.name", "general.license.link", "general.url", "general.repo_url",
                     "general.languages", "general.tags")


@dataclass
class ConverterInput:
    """What the converter is given: convert_hf_to_gguf.py's folder, --model-name and --metadata."""

    hf_dir: Path
    source_name: str                         # slim.source: the source's file or folder name
    model_name: str | None = None
    metadata_override: Path | None = None
    general: dict[str, Any] | None = None    # the general.* fields in metadata_override


def source_general(gguf_path: Path) -> dict[str, Any]:
    """The descriptive general.* fields of a GGUF source."""
    from .gguf_in import source_reader

    fields = source_reader(gguf_path).fields
    return {k: fields[k].contents() for k in _DESCRIPTIVE_KEYS if k in fields}


def _write_config_and_tokenizer(config, tokenizer, dest: Path, architecture: str) -> None:
    """config.json (without the GGUF quantization_config, with `architectures`) and the tokenizer files."""
    dest.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [architecture]
    cfg = json.loads(json.dumps(cfg, default=str))
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(dest))


def export_hf_folder(model, tokenizer, dest: Path) -> Path:
    """Write a whole transformers model + tokenizer as an HF folder llama.cpp's converter reads (reference files
    of tests and the report; `convert` itself exports no weights, export_converter_folder).

    save_pretrained refuses models loaded from GGUF, so: config.json, model.safetensors of the (dequantized)
    weights, tokenizer files.
    """
    from safetensors.torch import save_file, save_model

    dest = Path(dest)
    _write_config_and_tokenizer(model.config, tokenizer, dest, type(model).__name__)
    if getattr(model.config, "tie_word_embeddings", False):
        # save_model keeps one name of a shared tensor, alphabetically the first: lm_head. llama.cpp needs the
        # embedding (token_embd; output falls back to it), so keep embed_tokens and drop the tied lm_head.
        sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(dest / "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        save_model(model, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def export_converter_folder(model, tokenizer, dest: Path) -> Path:
    """The HF folder of a GGUF source without weights: config and tokenizer, which is all llama.cpp's converter
    reads from it when `convert` hands it the tensors itself (gguf_out, from the GGUF's memory map)."""
    dest = Path(dest)
    _write_config_and_tokenizer(model.config, tokenizer, dest, type(model).__name__)
    return dest


def converter_input(model, tokenizer, desc: dict[str, Any], export_dir: Path) -> ConverterInput:
    """The converter's input for a model (desc from model_io.stream_model). For a GGUF source, its config and
    tokenizer are exported into export_dir once (no weights: the writer reads those from the GGUF itself); a
    folder already marked complete (an interrupted run being resumed) is reused."""
    if not desc.get("gguf_file"):
        folder = Path(desc["folder"])
        return ConverterInput(folder, source_name=folder.name)
    src = Path(desc["folder"]) / desc["gguf_file"]
    general = source_general(src)
    export_dir = Path(export_dir)
    if not (export_dir / COMPLETE_MARK).is_file():
        export_converter_folder(model, tokenizer, export_dir)
        (export_dir / METADATA_FILE).write_text(json.dumps(general, indent=1, sort_keys=True))
        (export_dir / COMPLETE_MARK).write_text("ok\n")
    return ConverterInput(export_dir, source_name=desc["gguf_file"],
                          model_name=general.get("general.name") or src.stem,
                          metadata_override=export_dir / METADATA_FILE, general=general)
