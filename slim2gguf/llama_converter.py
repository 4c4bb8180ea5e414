"""llama.cpp's own converter (convert_hf_to_gguf.py's `conversion` package, in the patched vendored tree): import
it, pick its class for a model's architecture, and run it quietly. What it writes for an HF folder (metadata,
tokenizer, tensor names, row order) is what slim2gguf's files carry, so nothing here re-derives any of it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from .errors import SlimError
from .paths import SOURCE_DIR


def import_conversion():
    """Import the `conversion` package of the patched llama.cpp tree (needs the patched gguf-py installed)."""
    if not (SOURCE_DIR / "conversion" / "__init__.py").exists():
        raise SlimError(f"llama.cpp's converter not found in {SOURCE_DIR}; run `bash scripts/setup.sh`")
    if str(SOURCE_DIR) not in sys.path:
        sys.path.insert(1, str(SOURCE_DIR))
    import conversion
    return conversion


@contextlib.contextmanager
def quiet_converter(verbose: bool):
    """The converter's logger at ERROR (DEBUG with verbose) for the duration; yields the package."""
    conversion = import_conversion()
    logger = conversion.logger
    old = logger.level
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    if verbose and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    try:
        yield conversion
    except NotImplementedError as e:   # what the converter raises for what it cannot write (e.g. a tokenizer)
        raise SlimError(f"llama.cpp's converter cannot write this model: {str(e).splitlines()[0]}") from None
    finally:
        logger.setLevel(old)


def converter_class(hf_dir: Path):
    """The vendored converter's class for the HF folder's architecture (SlimError if unsupported)."""
    conversion = import_conversion()
    try:
        hparams = conversion.ModelBase.load_hparams(Path(hf_dir), False)
        arch = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
    except (OSError, ValueError, KeyError) as e:
        raise SlimError(f"cannot read the model config in {hf_dir}: {e}") from None
    try:
        return conversion.get_model_class(arch)
    except NotImplementedError:
        raise SlimError(f"unsupported architecture {arch!r}: llama.cpp's converter does not know it") from None
