"""Autograd primitives that move tensors between tensor-parallel ranks.

Each takes its process group explicitly. Activations are laid out [seq, batch, hidden]; the
sequence-parallel primitives split and gather along dim 0 (contiguous), the tensor-parallel
ones along the last dim. A replicated activation carries the full gradient on every rank, so
the backward of "copy" sums partial gradients and the backward of "reduce" is the identity.
"""
import torch
import torch.distributed as dist


def _world(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if _world(group) == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def all_gather_dim0(x: torch.Tensor, group) -> torch.Tensor:
    n = _world(group)
    if n == 1:
        return x
    x = x.contiguous()
    out = torch.empty((n * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x, group=group)
    return out


def reduce_scatter_dim0(x: torch.Tensor, group) -> torch.Tensor:
    n = _world(group)
    if n == 1:
        return x
    if x.shape[0] % n:
        raise ValueError(f"reduce-scatter of dim 0 = {x.shape[0]} over {n} ranks")
    x = x.contiguous()
    out = torch.empty((x.shape[0] // n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x, group=group)
    return out


def _split(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    n = _world(group)
    if n == 1:
        return x
    return x.chunk(n, dim=dim)[dist.get_rank(group)].contiguous()


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    n = _world(group)
    if n == 1:
        return x
    g = all_gather_dim0(x.movedim(-1, 0), group)  # gather along a leading dim, then move it back
    return torch.cat(g.chunk(n, dim=0), dim=0).movedim(0, -1).contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g.clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group, -1)

    @staticmethod
    def backward(ctx, g):
        return _gather_last(g, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, g):
        return _split(g, ctx.group, -1), None


class _ScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group, 0)

    @staticmethod
    def backward(ctx, g):
        return all_gather_dim0(g, ctx.group), None


class _GatherFromSP(torch.autograd.Function):
    """All-gather along the sequence. Its output feeds TP-parallel compute, whose gradients are
    partial per rank, so backward reduce-scatters (sums and splits)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_dim0(x, group)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter_dim0(g, ctx.group), None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter_dim0(x, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather_dim0(g, ctx.group), None


def copy_to_tp(x, group):
    """Identity forward; all-reduce of the gradient (input of a column-parallel layer)."""
    return x if _world(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x, group):
    """All-reduce forward; identity backward (output of a row-parallel layer)."""
    return x if _world(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp(x, group):
    """Keep this rank's slice of the last dim; backward gathers it."""
    return x if _world(group) == 1 else _ScatterToTP.apply(x, group)


def gather_from_tp(x, group):
    """Concatenate the last dim over the group; backward keeps this rank's slice."""
    return x if _world(group) == 1 else _GatherFromTP.apply(x, group)


def scatter_to_sp(x, group):
    """Keep this rank's sequence slice (dim 0); backward all-gathers."""
    return x if _world(group) == 1 else _ScatterToSP.apply(x, group)


def gather_from_sp(x, group):
    """All-gather the sequence (dim 0); backward reduce-scatters."""
    return x if _world(group) == 1 else _GatherFromSP.apply(x, group)


def reduce_scatter_to_sp(x, group):
    """Reduce-scatter along the sequence (dim 0); backward all-gathers."""
    return x if _world(group) == 1 else _ReduceScatterToSP.apply(x, group)
