"""Process groups for a plan, built once and handed out explicitly.

Ranks are laid out stage-major: stage s owns global ranks [s*W, (s+1)*W) with W = world/pp.
Inside a stage a layer with TP degree t and dp = W/t uses either consecutive TP groups
([0,1],[2,3] for t=2, W=4) or strided ones ([0,2],[1,3]); its DP groups are the complement.
Every group any rank needs is created on every rank in the same order (new_group is
collective), cached by its rank tuple so no communicator is created twice.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_galvatron.layout import Layout, exchange_sets
from megatron_galvatron.plan import Plan


class GroupCache:
    """Process groups by rank tuple, each created once. Creating one is collective: `create`
    must be called with the same tuples in the same order on every rank."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._groups: Dict[Tuple[int, ...], Optional[dist.ProcessGroup]] = {}

    def create(self, ranks: Sequence[int]) -> Optional[dist.ProcessGroup]:
        t = tuple(ranks)
        if t not in self._groups:
            if len(t) == 1 or not dist.is_initialized():
                self._groups[t] = None
            elif t == tuple(range(self.world_size)):
                self._groups[t] = dist.group.WORLD
            else:
                self._groups[t] = dist.new_group(list(t))
        return self._groups[t]

    def __getitem__(self, ranks: Sequence[int]) -> Optional[dist.ProcessGroup]:
        """A group already created (None when it is a single rank)."""
        return self._groups[tuple(ranks)]


@dataclass
class LayerGroups:
    """Everything a layer needs to know about its place in the world.

    dp_group is where the unit's parameters are replicated (ddp) or sharded (zero2/zero3) and
    its gradients summed. A Ulysses unit has no TP (tp_ranks is the rank itself): its layout's
    groups are its sequence (all-to-all) groups, seq_group, and every stage rank holds its
    parameters, so its dp_group is the whole stage."""

    layout: Layout
    tp_group: Optional[dist.ProcessGroup]
    tp_ranks: Tuple[int, ...]
    tp_rank: int
    dp_group: Optional[dist.ProcessGroup]
    dp_ranks: Tuple[int, ...]
    dp_rank: int
    stage_group: Optional[dist.ProcessGroup]
    stage_ranks: Tuple[int, ...]
    seq_group: Optional[dist.ProcessGroup] = None
    seq_ranks: Tuple[int, ...] = ()
    seq_rank: int = 0

    @property
    def ulysses(self) -> int:
        """The Ulysses group size (0 for a unit without Ulysses)."""
        return len(self.seq_ranks) if len(self.seq_ranks) > 1 else 0

    @property
    def rng_rank(self) -> int:
        """The rank whose dropout stream this unit draws: ranks holding different sequence
        chunks or heads (TP or Ulysses group) draw different masks."""
        return self.seq_rank if self.ulysses else self.tp_rank

    @property
    def megatron_sp(self) -> bool:
        return self.layout.sp and self.tp > 1

    @property
    def tp(self) -> int:
        return len(self.tp_ranks)

    @property
    def dp(self) -> int:
        return len(self.dp_ranks)


class ParallelState:
    """All groups of one plan for one rank. Build it on every rank with the same plan."""

    def __init__(self, plan: Plan, rank: int, world_size: int, device: torch.device):
        self.plan, self.rank, self.world_size, self.device = plan, rank, world_size, torch.device(device)
        w = plan.stage_world
        self.stage_world = w
        self.pp_rank = rank // w
        self.local_idx = rank % w
        self.stage_ranks = tuple(range(self.pp_rank * w, (self.pp_rank + 1) * w))
        self._cache = GroupCache(world_size)
        self._exchange: Dict[Tuple[Layout, Layout], Tuple[Optional[dist.ProcessGroup], Tuple[int, ...]]] = {}
        self._build_all(plan)

    # One list of rank tuples, identical on every rank, in creation order.
    def _all_group_tuples(self, plan: Plan) -> List[Tuple[int, ...]]:
        w, pp = plan.stage_world, plan.pp_deg
        layouts = sorted({Layout.of(s, w) for s in list(plan.layers) + [plan.vocab.as_layer()]},
                         key=lambda lo: (lo.tp, lo.tp_consec, lo.sp))
        tuples: List[Tuple[int, ...]] = []
        for stage in range(pp):
            ranks = range(stage * w, (stage + 1) * w)
            tuples.append(tuple(ranks))
            for lo in layouts:
                tp_groups, dp_groups = lo.groups(ranks)
                tuples += tp_groups + dp_groups
        for stage in range(pp):  # re-layout between neighbouring layers of different layouts
            base = stage * w
            for src, dst in self._layout_pairs(plan, stage):
                tuples += [tuple(base + i for i in members) for members in exchange_sets(src, dst, w)]
        for i in range(w):  # pipeline neighbours and the tied-embedding pair
            tuples.append(tuple(s * w + i for s in range(pp)))
            tuples.append(tuple(sorted({i, (pp - 1) * w + i})))
        tuples.append(tuple(range(self.world_size)))
        seen, ordered = set(), []
        for t in tuples:
            if t not in seen:
                seen.add(t)
                ordered.append(t)
        return ordered

    @staticmethod
    def _layout_pairs(plan: Plan, stage: int) -> List[Tuple[Layout, Layout]]:
        """Adjacent (from, to) layouts of one stage's forward walk that differ."""
        w = plan.stage_world
        ids = list(plan.stage_layers(stage))
        seq = [Layout.of(plan.vocab.as_layer(), w) if stage == 0 else Layout.of(plan.layers[ids[0] - 1], w)]
        seq += [Layout.of(plan.layers[i], w) for i in ids]
        if stage == plan.pp_deg - 1:
            seq.append(Layout.of(plan.vocab.as_layer(), w))
        return [(a, b) for a, b in zip(seq, seq[1:]) if a != b]

    def exchange_group(self, src: Layout, dst: Layout) -> Tuple[Optional[dist.ProcessGroup], Tuple[int, ...]]:
        """The group (and its members' stage-local indices) this rank re-lays-out src -> dst in."""
        key = (src, dst)
        if key not in self._exchange:  # asked on every micro-batch: work the sets out once
            members = next(m for m in exchange_sets(src, dst, self.stage_world) if self.local_idx in m)
            base = self.pp_rank * self.stage_world
            self._exchange[key] = (self.group(tuple(base + i for i in members)), members)
        return self._exchange[key]

    def _build_all(self, plan: Plan) -> None:
        for t in self._all_group_tuples(plan):
            self._cache.create(t)

    def group(self, ranks: Sequence[int]) -> Optional[dist.ProcessGroup]:
        """The cached group of these ranks (None when it is a single rank)."""
        return self._cache[ranks]

    @property
    def world_group(self):
        return self._cache[tuple(range(self.world_size))]

    @property
    def stage_group(self):
        return self._cache[self.stage_ranks]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.plan.pp_deg - 1

    def rank_in_stage(self, stage: int) -> int:
        """The rank at this rank's position in another stage (pipeline neighbour)."""
        return stage * self.stage_world + self.local_idx

    @property
    def embedding_ranks(self) -> Tuple[int, ...]:
        return tuple(sorted({self.local_idx, (self.plan.pp_deg - 1) * self.stage_world + self.local_idx}))

    def layer_groups(self, strategy) -> LayerGroups:
        layout = Layout.of(strategy, self.stage_world)
        tp_groups, dp_groups = layout.groups(self.stage_ranks)
        tp_ranks = next(g for g in tp_groups if self.rank in g)
        dp_ranks = next(g for g in dp_groups if self.rank in g)
        dp_rank, tp_rank = layout.coords(self.local_idx, self.stage_world)
        assert tp_ranks.index(self.rank) == tp_rank and dp_ranks.index(self.rank) == dp_rank
        if strategy.ulysses:
            return LayerGroups(layout=layout, tp_group=None, tp_ranks=(self.rank,), tp_rank=0,
                               dp_group=self.stage_group, dp_ranks=self.stage_ranks, dp_rank=self.local_idx,
                               stage_group=self.stage_group, stage_ranks=self.stage_ranks,
                               seq_group=self.group(tp_ranks), seq_ranks=tp_ranks, seq_rank=tp_rank)
        return LayerGroups(layout=layout, tp_group=self.group(tp_ranks), tp_ranks=tp_ranks, tp_rank=tp_rank,
                           dp_group=self.group(dp_ranks), dp_ranks=dp_ranks, dp_rank=dp_rank,
                           stage_group=self.stage_group, stage_ranks=self.stage_ranks)


EXPANDABLE_SEGMENTS = "expandable_segments:True"


def configure_cuda_allocator() -> str:
    """Use expandable segments unless PYTORCH_CUDA_ALLOC_CONF says otherwise; returns the setting.

    A training step allocates and frees tensors of many sizes (activations, gathered ZeRO weights,
    gradient buckets). With fixed-size segments the cache fragments, and near the memory limit
    the allocator frees its cache and retries cudaMalloc, synchronising the device each time;
    segments that grow in place avoid most of that. Must run before the first CUDA allocation."""
    import os
    conf = os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", EXPANDABLE_SEGMENTS)
    if conf == EXPANDABLE_SEGMENTS and torch.cuda.is_available() and torch.cuda.is_initialized():
        # the variable is read when CUDA starts; if it already has, set the allocator directly
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or \
            getattr(torch.cuda.memory, "_set_allocator_settings", None)
        if setter is not None:
            setter(EXPANDABLE_SEGMENTS)
    return conf


def detect_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        configure_cuda_allocator()
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def launch_world_size() -> int:
    """The world size torchrun launched (1 without it), known before any process group exists."""
    import os
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def launch_gpus_per_node() -> Optional[int]:
    """Processes per node torchrun launched (LOCAL_WORLD_SIZE; None without torchrun)."""
    import os
    if "RANK" not in os.environ or "LOCAL_WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["LOCAL_WORLD_SIZE"])


def init_distributed(device: torch.device, timeout_minutes: float = 10.0) -> Tuple[int, int]:
    """Initialise torch.distributed from torchrun's environment (NCCL on CUDA, gloo on CPU). A
    collective waiting longer than timeout_minutes for a peer fails (Megatron's default: 10)."""
    import os
    from datetime import timedelta
    if "RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes), **kwargs)
    return dist.get_rank(), dist.get_world_size()
