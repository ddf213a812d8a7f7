"""ADPA Lab core library: preference distillation (DCKD, ADPA, ADPA+) for small language models."""

import logging

__version__ = "0.1.0"

OPTIONAL_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropOptionalKernelNotice(logging.Filter):
    """bitsandbytes tries to fetch an optional CPU 4-bit kernel from a model hub when it is imported and logs
    a warning when it cannot (always, offline); it then uses its own CPU kernel, which is what 4-bit teachers
    on CPU run on here. Only that one message is dropped: every other bitsandbytes message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(OPTIONAL_KERNEL_NOTICE)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropOptionalKernelNotice())
