"""The one place llama_cpp is imported: its log goes nowhere (our typed errors tell the user).

Everything that touches llama.cpp (the embedder, the quantizer) gets the module from
``llama_cpp_module()``, so whatever must be set before the native library loads is set once.
"""

from __future__ import annotations

from types import ModuleType

_LOG_CALLBACK: object = None


def llama_cpp_module() -> ModuleType:
    """``llama_cpp``, imported with its log silenced."""
    import llama_cpp

    quiet_llama(llama_cpp)
    return llama_cpp


def quiet_llama(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's own log to nowhere; errors reach the user through our typed errors."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _drop(level: int, text: bytes, user_data: object) -> None:
        return None

    # The C side keeps only the pointer: hold the callback for the life of the process.
    _LOG_CALLBACK = _drop
    llama_cpp.llama_log_set(_drop, None)
