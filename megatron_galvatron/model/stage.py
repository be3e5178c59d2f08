"""The part of the model one pipeline stage runs, built from the plan.

forward() walks the stage: embedding (first stage), then each layer under its own strategy,
re-laying out the activation wherever two neighbours' layouts differ, then the LM head and
loss (last stage). Every other per-layer concern (checkpointing, compile, data parallelism)
is applied afterwards by model/parallelize.py over ``units()``; this module is plain PyTorch
given explicit groups.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.init import init_params_
from megatron_galvatron.model.param_facts import ParamMeta, param_facts
from megatron_galvatron.model.relayout import relayout
from megatron_galvatron.model.transformer_layer import TransformerLayer
from megatron_galvatron.model.vocab import VocabModule
from megatron_galvatron.parallel_state import LayerGroups, Layout, ParallelState
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy


@dataclass(frozen=True)
class Unit:
    """One piece of a stage that runs under its own strategy: a transformer layer or the vocab
    module. ``name`` is the prefix of its parameters' names ("layers.3", "vocab")."""

    name: str
    module: nn.Module
    strategy: Union[LayerStrategy, VocabStrategy]
    groups: LayerGroups


class StageModel(nn.Module):
    def __init__(self, cfg: GPTConfig, plan: Plan, ps: ParallelState, seed: int):
        super().__init__()
        self.cfg, self.plan, self.ps = cfg, plan, ps
        device = ps.device
        w = plan.stage_world
        self.layer_ids = list(plan.stage_layers(ps.pp_rank))
        self.vocab_groups = ps.layer_groups(plan.vocab.as_layer())
        self.vocab_layout = self.vocab_groups.layout
        self.vocab: Optional[VocabModule] = None
        if ps.is_first_stage or ps.is_last_stage:
            self.vocab = VocabModule(cfg, self.vocab_groups, self.vocab_groups.megatron_sp, ps.is_first_stage,
                                     ps.is_last_stage, seed, device)
        self.layers = nn.ModuleDict()
        self.layouts = []
        for i in self.layer_ids:
            s = plan.layers[i]
            groups = ps.layer_groups(s)
            self.layers[str(i)] = TransformerLayer(cfg, groups, groups.megatron_sp, seed, device, layer_idx=i)
            self.layouts.append(groups.layout)
        # Layout of what arrives from the previous stage (its last layer's).
        self.input_layout = (self.vocab_layout if ps.is_first_stage
                             else Layout.of(plan.layers[self.layer_ids[0] - 1], w))
        # Data-parallel wrappers replace parameter objects; what is known about each is kept by name.
        self.param_meta: Dict[str, ParamMeta] = {}
        for u in self.units():
            self.param_meta.update(param_facts(u.module, u.groups.tp_rank, u.groups.tp, prefix=u.name + "."))
        init_params_(self, self.param_meta, cfg.init_std, cfg.num_layers, seed)

    def units(self) -> List[Unit]:
        """The stage's layers in order, then the vocab module (where this stage has one)."""
        out = [Unit(f"layers.{i}", self.layers[str(i)], self.plan.layers[i], self.layers[str(i)].groups)
               for i in self.layer_ids]
        if self.vocab is not None:
            out.append(Unit("vocab", self.vocab, self.plan.vocab, self.vocab_groups))
        return out

    def param_tp_groups(self) -> Dict[str, object]:
        """The TP group of every parameter, by name: the group of the unit that owns it."""
        return {f"{u.name}.{n}": u.groups.tp_group for u in self.units() for n, _ in u.module.named_parameters()}

    @property
    def output_layout(self) -> Layout:
        return self.layouts[-1] if self.layouts else self.input_layout

    def batch_block(self, layout: Layout, global_micro_batch: int) -> slice:
        return layout.block(self.ps.local_idx, self.plan.stage_world, 1, global_micro_batch)[1]

    def local_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global micro-batch [batch, seq] as the embedding consumes it: [seq, b]."""
        return tokens[self.batch_block(self.vocab_layout, tokens.shape[0])].t().contiguous()

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """First stage: x is local tokens [seq, b]; otherwise the received activation.
        Last stage returns per-token losses [seq, b]; others the activation to send."""
        if self.ps.is_first_stage:
            x = self.vocab.embed(x)
        cur = self.input_layout
        for layer, layout in zip(self.layers.values(), self.layouts):
            x = relayout(x, cur, layout, self.ps)
            x = layer(x)
            cur = layout
        if self.ps.is_last_stage:
            x = relayout(x, cur, self.vocab_layout, self.ps)
            return self.vocab.head(x, labels)
        return x
