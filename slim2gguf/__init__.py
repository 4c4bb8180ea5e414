"""slim2gguf: SliM-LLM mixed-precision quantization shipped as GGUF for a patched llama.cpp."""

__version__ = "0.1.0"
