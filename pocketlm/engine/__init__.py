"""The engine: llama.cpp through llama-cpp-python's C API (``llama_cpp.llama_cpp``).

pocketlm does not use llama-cpp-python's high-level ``Llama`` class: it drives
llama.cpp's own batch, KV-cache and sampler API directly, which is what
batching, prefix caching and a per-token cost near zero need.
"""
