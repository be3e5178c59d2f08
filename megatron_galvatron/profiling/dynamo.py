"""torch.compile set up for a profile, which visits many shapes where training compiles one."""
from contextlib import contextmanager


@contextmanager
def static_shapes():
    """Compile every profiled shape as its own static graph, as training compiles its one shape
    (after two shapes dynamo would otherwise switch to a dynamic-shape graph)."""
    import torch._dynamo.config as dynamo_config
    old = dynamo_config.automatic_dynamic_shapes
    dynamo_config.automatic_dynamic_shapes = False
    try:
        yield
    finally:
        dynamo_config.automatic_dynamic_shapes = old


def allow_recompiles(n: int) -> None:
    """Training compiles each compiled region (e.g. the loss) for its one shape; a profile
    visits many shapes, and past dynamo's recompile limit it would time the eager fallback."""
    try:
        import torch._dynamo.config as dynamo_config
    except ImportError:
        return
    for name in ("recompile_limit", "cache_size_limit"):
        if isinstance(getattr(dynamo_config, name, None), int):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), n))
