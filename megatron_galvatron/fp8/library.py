"""torchao.float8, imported once, quietly, and only where a float8 layer or baseline is built."""
import logging
import warnings

from megatron_galvatron.errors import UserError

INSTALL = "pip install torchao==0.18.0"


def float8(what: str = "float8 layers (\"fp8\" in the plan, --fp8)"):
    """The torchao.float8 module, or a one-line UserError saying that ``what`` needs it and how
    to install it."""
    # Without CUDA its optional kernels fail to load and say so on import, and it registers an
    # enum with torch's pytree, which warns: float8 training needs none of it.
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.float8 as f8
    except ImportError:
        raise UserError(f"{what} need torchao ({INSTALL})") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return f8
