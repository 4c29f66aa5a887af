"""pyllama_q.convert: checkpoints (Meta or Hugging Face layout) to GGUF."""
