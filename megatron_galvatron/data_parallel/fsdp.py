"""ZeRO-2 and ZeRO-3 (SDP) for one module on its own DP group, through FSDP2.

zero3 reshards parameters after forward (gathered again for backward); zero2 keeps them
gathered from forward to backward and only the gradients and optimizer state stay sharded.
The master parameters are fp32 shards; compute runs in bf16 when asked; gradients are reduced
in fp32 as a sum (the loss is already divided by the global token count). A parameter may bring
its own all-gather (FSDP2's fsdp_pre/post_all_gather hooks): the float8 weights of a zero3 layer
whose linears cast tensorwise (fp8/fsdp_gather.py) are gathered as float8 bytes, not bf16.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


def shard_module(module: nn.Module, group: dist.ProcessGroup, device: torch.device, dp_type: str,
                 bf16: bool, forward_methods=()) -> nn.Module:
    mesh = DeviceMesh.from_group(group, device.type)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    fully_shard(module, mesh=mesh, reshard_after_forward=(dp_type == "zero3"), mp_policy=mp)
    module.set_gradient_divide_factor(1.0)
    if hasattr(module, "set_force_sum_reduction_for_comms"):
        module.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no PREMUL_SUM)
    for name in forward_methods:
        register_fsdp_forward_method(module, name)
    module.dp_type = dp_type
    return module


def set_sync(module: nn.Module, is_last_microbatch: bool) -> None:
    """zero2 accumulates unsharded gradients and reduce-scatters once; zero3 every micro-batch."""
    if getattr(module, "dp_type", None) == "zero2":
        module.set_requires_gradient_sync(is_last_microbatch)
