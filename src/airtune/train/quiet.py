"""Three lines every train log showed that say nothing about the job, silenced where they come from
(each with the library's own setting where it has one, else a filter on that one message):

- DeepSpeed (imported by transformers' and accelerate's integrations) warns "Setting accelerator to
  CPU. If you have GPU or other accelerator, we were unable to detect it." when it finds no GPU:
  its own setting DS_ACCELERATOR=cpu says so beforehand (only when torch sees no CUDA device; it is
  left alone when set already).
- bitsandbytes, on import on a CPU with AVX512-BF16, tries to fetch a faster 4-bit kernel from the
  Hugging Face hub (the `kernels` package, not installed: airtune trains offline) and logs "Failed to
  load CPU gemm_4bit_forward from kernels-community ... pip install kernels" as a warning; its own
  CPU kernel is used, as intended. bitsandbytes has no setting for it: a filter drops that message.
- peft asks the model `is_gradient_checkpointing`, which transformers 5 deprecated with a
  FutureWarning ("use is_activation_checkpointing"): peft's to change, nothing a job can do; ignored
  by message.
"""

from __future__ import annotations

import logging
import os
import warnings

BNB_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward"
GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_libraries() -> None:
    """Before transformers, peft, deepspeed or bitsandbytes is imported."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropMessage) for f in bnb.filters):
        bnb.addFilter(_DropMessage(BNB_KERNEL_MESSAGE))
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_WARNING, category=FutureWarning)
