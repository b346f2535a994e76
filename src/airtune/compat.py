"""The one place airtune reaches into libraries beyond their documented API.

Each function here names what it relies on; tests/test_compat.py checks that every one of those
attributes still exists in the pinned versions, so an upgrade that removes one fails there, with
the name of the attribute, instead of somewhere in a training run.
"""

from __future__ import annotations

# (module, attribute path) pairs this module relies on; tests/test_compat.py imports each.
RELIES_ON: list[tuple[str, str]] = [
    ("transformers.quantizers.base", "HfQuantizer.remove_quantization_config"),
]


class CompatError(RuntimeError):
    """A library no longer has what airtune relies on: upgrade airtune or pin the library."""


def drop_gguf_quantization(model) -> None:
    """Make a model loaded from a GGUF file saveable as an ordinary model.

    transformers dequantizes Llama-family GGUF weights while loading (its older GGUF loader), yet
    marks the model as quantized with `gguf`, so `save_pretrained` refuses it and
    `model.dequantize()` is not implemented for GGUF. The quantizer's own
    `remove_quantization_config` clears that mark (and the config's quantization_config)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    remove = getattr(quantizer, "remove_quantization_config", None)
    if remove is None:
        raise CompatError(f"{type(quantizer).__name__} has no remove_quantization_config: "
                          "transformers changed how a GGUF model is un-marked as quantized")
    remove(model)
