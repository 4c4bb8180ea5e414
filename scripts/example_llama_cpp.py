"""Load a SLIM GGUF with llama-cpp-python and generate text.

    bash scripts/setup.sh --llama                       # builds the patched llama.cpp + llama-cpp-python
    .venv/bin/slim2gguf convert demo --bits 2 -o smollm2-slim2.gguf
    .venv/bin/python scripts/example_llama_cpp.py smollm2-slim2.gguf "The capital of France is"

Nothing to configure: `slim2gguf build-llama` puts the patched libllama.so where llama_cpp looks by default.
"""
import sys

from llama_cpp import Llama

path = sys.argv[1] if len(sys.argv) > 1 else "smollm2-slim2.gguf"
prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"

llm = Llama(model_path=path, n_ctx=1024, verbose=False)
print("file type:", llm.metadata.get("general.file_type"), "| SLIM settings:",
      {k: v for k, v in llm.metadata.items() if k.startswith("slim.")})

out = llm(prompt, max_tokens=48, temperature=0.0)
print(prompt + out["choices"][0]["text"])

# chat models (SmolLM2-Instruct) also work through the chat template stored in the GGUF
chat = llm.create_chat_completion(messages=[{"role": "user", "content": "Name three colours."}],
                                  max_tokens=48, temperature=0.0)
print(chat["choices"][0]["message"]["content"])
