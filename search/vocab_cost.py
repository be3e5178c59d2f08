"""Time and memory of the vocabulary units (embedding on the first stage, LM head and loss on
the last), a part of CostModel: it uses the model, profile, network and passes of the rest."""
from typing import Tuple

from megatron_galvatron.plan import VocabStrategy
from search import ulysses_cost
from search.stage_memory import BF16, FP32, Memory, is_sharded, model_state_bytes
from search.time_terms import Time


class VocabCost:
    def vocab_copies(self, pp_deg: int, stage: int) -> int:
        first, last = stage == 0, stage == pp_deg - 1
        if first and last:
            return 1 if self.model.tie_embeddings else 2
        return int(first) + int(last)

    def vocab_params(self, v: VocabStrategy, pp_deg: int, stage: int) -> Tuple[float, float]:
        """(parameters of one vocab matrix shard, parameters of the whole vocab unit on this stage)."""
        one = self.profile.vocab_param_count / v.tp
        params = self.vocab_copies(pp_deg, stage) * one
        if stage == 0 and self.model.learned_positions:  # learned positions, replicated over TP
            params += self.model.seq_length * self.model.hidden_size
        return one, params

    def _vocab_dp(self, v: VocabStrategy, params: float, stage_world: int, first: bool, last: bool,
                  bwd: float) -> Tuple[float, float]:
        """Data-parallel traffic of the vocab unit as (per micro-batch, per iteration).

        The unit's gradients are complete only after its last backward on the stage: the embedding's,
        which ends the first stage's backward with nothing left to hide behind, or the LM head's,
        which starts the last stage's backward (the head's backward stands in for the layers' after
        it). FSDP2 gathers the weights for each forward method called (embedding, head), ZeRO-3
        again for each backward; ZeRO-2 keeps them from the first forward until the first backward,
        which reshards them, so a unit holding both ends gathers again for the embedding's backward."""
        dp, stride = self.dp_group(v, stage_world)
        if dp == 1:
            return 0.0, 0.0
        net = self.net
        grad, par = FP32 * params, BF16 * params

        def behind_head(*comms: Tuple[float, str]) -> float:
            return net.overlap_many(bwd, list(comms)) - bwd

        if not is_sharded(v.dp_type, dp):
            ar = net.collective("all_reduce", dp, stride, grad)
            return 0.0, (ar if first else behind_head((ar, "all_reduce")))
        ag = net.collective("all_gather", dp, stride, par)
        rs = net.collective("reduce_scatter", dp, stride, grad)
        ends = int(first) + int(last)
        if v.dp_type == "zero3":
            per_mb = (ends * ag + (behind_head((ag, "all_gather"), (rs, "reduce_scatter")) if last else 0.0)
                      + ((ag + rs) if first else 0.0))
            return per_mb, 0.0
        per_mb = ag + (ag if ends == 2 else 0.0)
        return per_mb, (behind_head((rs, "reduce_scatter")) if last else 0.0) + (rs if first else 0.0)

    def vocab(self, v: VocabStrategy, stage_world: int, global_micro_batch: int, pp_deg: int,
              stage: int) -> Tuple[Time, Memory]:
        """Embedding on the first stage, LM head + loss on the last (gpt2 ties them: a copy on each)."""
        if v.ulysses:
            return ulysses_cost.vocab(self, v, stage_world, global_micro_batch, pp_deg, stage)
        first, last = stage == 0, stage == pp_deg - 1
        if self.vocab_copies(pp_deg, stage) == 0:
            return Time(0.0, 0.0), Memory(0.0, 0.0, 0.0)
        net, p, h = self.net, self.profile, self.model.hidden_size
        dp = stage_world // v.tp
        sharded = is_sharded(v.dp_type, dp)
        bf16 = self.bf16_unit(v.dp_type, dp)
        samples = global_micro_batch / dp
        tokens = samples * self.model.seq_length
        # A unit not on bf16 weights (autocast over an fp32 table and an fp32 norm) outputs fp32
        act = self._activation_bytes(samples, BF16 if bf16 else FP32)
        size, stride = self.tp_group(v, stage_world)
        one, params = self.vocab_params(v, pp_deg, stage)
        per_mb = bwd = compute = 0.0
        if first:  # the vocab-parallel embedding sums partial lookups over the TP group
            per_mb += net.collective("reduce_scatter" if v.sp else "all_reduce", size, stride, act)
            emb = p.embedding_fits(v.tp)
            if emb is not None:
                compute += emb[0](tokens) + emb[1](tokens)
                per_mb += emb[0](tokens) + emb[1](tokens)
        if last:
            f, b = (p.bf16_vocab_fits(v.tp) if bf16 else None) or p.vocab_fits(v.tp)
            fwd, bwd = f(tokens), b(tokens)
            # the head's input: gathered forward and its gradient reduce-scattered backward under sp,
            # else copied forward and its gradient all-reduced backward
            if v.sp:
                head = (net.collective("all_gather", size, stride, act)
                        + net.collective("reduce_scatter", size, stride, act))
            else:
                head = net.collective("all_reduce", size, stride, act)
            # the loss reduces the max, then sum-exp and target logit together (fp32 per token)
            loss = (net.collective("all_reduce", size, stride, tokens * FP32)
                    + net.collective("all_reduce", size, stride, 2 * tokens * FP32))
            compute += fwd + bwd
            per_mb += fwd + bwd + head + loss
        dp_mb, sync = self._vocab_dp(v, params, stage_world, first, last, bwd)
        per_mb += dp_mb
        # FSDP2 gathers for each forward method the unit runs (embedding, head), ZeRO-3 again for
        # each backward, ZeRO-2 again for the embedding's backward when the unit holds both; one
        # reduce-scatter per end (see _vocab_dp)
        ends = int(first) + int(last)
        gathers = 2 * ends if v.dp_type == "zero3" else 1 + int(ends == 2)
        fsdp_mb, fsdp_iter = self.fsdp_passes(v.dp_type, params, dp, gathers, ends)
        # the LM head's weight folds like a layer's; the embedding was profiled on an fp32 table,
        # whose in-place fp32 gradient accumulation (read 4 + 4, write 4) moved more than the fold
        passes_mb = fsdp_mb + (self.fold_pass(one, v.dp_type, dp) if last else 0.0)
        per_mb += passes_mb
        local = params / dp if sharded else params
        if self.model.tie_embeddings and pp_deg > 1:
            # the two copies' gradients are summed once per step over the (first, last) stage pair
            sync += net.collective("all_reduce", 2, (pp_deg - 1) * stage_world, FP32 * (one / dp if sharded else one))
        busy = (self.optimizer_step(local) + self.grad_passes(local, not sharded)
                + self.compute_copy_pass(local, v.dp_type, dp) + fsdp_iter)
        time = Time(per_mb, sync + busy, compute, busy, passes_mb)

        act_kept = transient = 0.0
        if last:
            if bf16:
                per_token = p.bf16_vocab_activation_per_token(v.tp)
                if per_token is None:  # the final norm's input is bf16, and no bf16 cast is saved beside it
                    per_token = p.vocab_activation_per_token(v.tp) - 2 * h / (v.tp if v.sp else 1)
                const = 0.0
            else:
                per_token = p.vocab_activation_per_token(v.tp)
                const = p.vocab_constant(v.tp)
                const = BF16 * one if const is None else const
            act_kept = per_token * tokens + const
            # The loss's backward writes the bf16 gradient of the logits while the logits are still
            # saved, and the LM head then makes its weight gradient in bf16, at the start of the
            # backward when every activation of the stage is still alive.
            transient = BF16 * self.model.vocab_size / v.tp * tokens + BF16 * one
        if v.dp_type == "zero3" and dp > 1:
            transient += BF16 * one
        return time, Memory(model_state_bytes(params, dp, v.dp_type, self.has_compute_copy(v.dp_type, dp)),
                            act_kept, transient)

