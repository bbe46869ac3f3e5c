"""Quantization: every type llama.cpp can write, a measured quality report for each result,
and the best type for a size budget.

- ``types``: the table of types (name, llama_ftype, nominal bits per weight).
- ``quantize``: one quantization into the store (llama.cpp in a child process).
- ``report``: the quality report against a reference (KL divergence, top-1, perplexity,
  decode speed).
- ``budget``: the lowest-KL-divergence type whose file fits a size budget.
- ``calibrated``: importance-aware quantization from calibration text.
"""
