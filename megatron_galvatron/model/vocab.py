"""Embedding (first stage) and final norm + LM head + loss (last stage) under the vocab strategy.

One module holds both ends so that with a single stage the tied GPT-2 embedding is one
parameter. With several stages the first and last stage each build it with only the parts
they use; a tied word embedding then exists on both and its gradients are summed across
them (see data_parallel/grad_sync.py). Under Ulysses the module is unsharded and each rank of
the sequence group embeds, and scores, only its own chunk of the sequence.
"""
import torch
import torch.nn.functional as F
from torch import nn

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.norms import Norm
from megatron_galvatron.parallel_state import LayerGroups
from megatron_galvatron.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_galvatron.tensor_parallel.layers import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    add_param,
    pad_vocab,
)
from megatron_galvatron.tensor_parallel.mappings import copy_to_tp, gather_from_sp, scatter_to_sp
from megatron_galvatron.tensor_parallel.random import RNGTracker


class VocabModule(nn.Module):
    def __init__(self, cfg: GPTConfig, groups: LayerGroups, sp: bool, has_embedding: bool, has_head: bool,
                 seed: int, device):
        super().__init__()
        self.cfg, self.groups, self.sp = cfg, groups, sp
        self.has_embedding, self.has_head = has_embedding, has_head
        self.seq_parts, self.seq_rank = groups.ulysses or 1, groups.seq_rank
        self.tracker = RNGTracker(seed, groups.rng_rank, device)
        self.padded_vocab = pad_vocab(cfg.vocab_size, cfg.make_vocab_size_divisible_by, groups.tp)
        if has_embedding or (has_head and cfg.tie_embeddings):
            self.word_embeddings = VocabParallelEmbedding(cfg.vocab_size, self.padded_vocab, cfg.hidden_size,
                                                          groups.tp_group, device=device)
        if has_embedding and cfg.learned_positions:
            shape = (cfg.max_position_embeddings, cfg.hidden_size)
            add_param(self, "position_embeddings", shape, shape, device, torch.float32)
        if has_head:
            self.final_norm = Norm(cfg.hidden_size, cfg.normalization, cfg.norm_eps, sp, device)
            if not cfg.tie_embeddings:
                self.lm_head = ColumnParallelLinear(cfg.hidden_size, self.padded_vocab, groups.tp_group, bias=False,
                                                    sequence_parallel=sp, unpadded_out=cfg.vocab_size, device=device)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [seq, batch] -> hidden [seq (/tp if sp), batch, hidden]."""
        chunk = self._own_chunk(tokens.shape[0])
        tokens = tokens[chunk]
        x = self.word_embeddings(tokens)
        if self.cfg.learned_positions:  # the chunk's global positions
            x = x + self.position_embeddings[chunk].unsqueeze(1)
        if self.sp:
            x = scatter_to_sp(x, self.groups.tp_group)
        p = self.cfg.hidden_dropout
        if p > 0 and self.training:
            if self.sp or self.seq_parts > 1:  # sequence shards need their own masks
                with self.tracker.fork():
                    x = F.dropout(x, p, True)
            else:
                x = F.dropout(x, p, True)
        return x

    def _own_chunk(self, seq: int) -> slice:
        """The positions this rank computes: all, or its chunk of the Ulysses group."""
        n = seq // self.seq_parts
        return slice(self.seq_rank * n, (self.seq_rank + 1) * n)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel logits [seq, batch, padded_vocab / tp]."""
        x = self.final_norm(x)
        if self.cfg.tie_embeddings:
            x = gather_from_sp(x, self.groups.tp_group) if self.sp else copy_to_tp(x, self.groups.tp_group)
            return F.linear(x, self.word_embeddings.weight)
        return self.lm_head(x)

    def head(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token loss [seq (/u under Ulysses), batch] for labels [seq, batch]."""
        labels = labels[self._own_chunk(labels.shape[0])]
        return vocab_parallel_cross_entropy(self.logits(x), labels, self.groups.tp_group, self.cfg.vocab_size)
