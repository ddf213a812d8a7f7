"""ADPA Lab core library: preference distillation (DCKD, ADPA, ADPA+) for small language models."""

import logging

__version__ = "0.1.0"

OPTIONAL_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
INT8_CAST_NOTICE = "MatMul8bitLt: inputs will be cast from"


class _DropOptionalKernelNotice(logging.Filter):
    """bitsandbytes tries to fetch an optional CPU 4-bit kernel from a model hub when it is imported and logs
    a warning when it cannot (always, offline); it then uses its own CPU kernel, which is what 4-bit teachers
    on CPU run on here. Only that one message is dropped: every other bitsandbytes message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(OPTIONAL_KERNEL_NOTICE)


class _Int8CastNoticeOnce(logging.Filter):
    """bitsandbytes' 8-bit layers log that they cast float32 / bfloat16 inputs to float16 on every call:
    about 1,700 identical lines in 4 training steps of a 135 M teacher. The cast is how its int8 matmul
    works, so the notice is shown once per process and its repeats are dropped; other messages still show."""

    shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(INT8_CAST_NOTICE):
            return True
        if type(self).shown:
            return False
        type(self).shown = True
        record.msg = f"{record.msg} (8-bit layers; shown once, repeats are not logged)"
        return True


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropOptionalKernelNotice())
logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Int8CastNoticeOnce())
