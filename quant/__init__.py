"""SliM-LLM quantization in plain torch: Hessians, salience, SBA, SQC, GPTQ. Knows nothing about GGUF."""
