"""HTTP interface: OpenAI- and Ollama-compatible APIs, metrics and a web chat page."""
