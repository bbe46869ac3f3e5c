"""The model store: GGUF files, their manifests, the catalog, pull and import."""
