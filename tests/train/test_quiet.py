"""airtune.train.quiet: the three messages every train log showed are gone, and nothing else is."""

from __future__ import annotations

import subprocess
import sys


def test_quiet_libraries_in_a_fresh_process():
    code = (
        "import logging, os, sys, warnings\n"
        "from airtune.train.quiet import quiet_libraries\n"
        "quiet_libraries(); quiet_libraries()\n"
        "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
        "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. pip install kernels', 'x')\n"
        "log.warning('another bitsandbytes warning')\n"
        "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning)\n"
        "warnings.warn('some other future change', FutureWarning)\n"
        "import torch\n"
        "print('DS', os.environ.get('DS_ACCELERATOR'), torch.cuda.is_available(), len(log.filters))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "gemm_4bit_forward" not in p.stderr and "another bitsandbytes warning" in p.stderr
    assert "is_gradient_checkpointing" not in p.stderr and "some other future change" in p.stderr
    ds, cuda, filters = p.stdout.split()[1:4]
    assert ds == ("None" if cuda == "True" else "cpu")
    assert filters == "1"  # called twice, one filter: safe to call from every entry point
