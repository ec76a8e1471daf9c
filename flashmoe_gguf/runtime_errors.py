"""The runtime's exception, importable without importing llama_cpp."""


class FlashMoeError(RuntimeError):
    """The streaming runtime failed: a read error, a changed model file, an unsupported file or ggml."""
