"""Making a small model good at a task: PyTorch copies of store models (``gguf_io``), depth and
width pruning (``prune``) and distillation, each result kept in the store as a GGUF file."""
