"""Worker side of the equivalence tests: train a few steps under each plan and report the
loss, the full (gathered) initial parameters, gradients and final parameters."""

from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.plan import Plan
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import reduce_loss, setup, train_step


# The key bias's gradient is zero in exact arithmetic (softmax ignores a per-query shift), so
# in float32 it is pure rounding noise that Adam would scale up to +-lr per step; an eps above
# that noise keeps the comparison about the parallel math rather than about noise.
ADAM_EPS = 1e-6


def model_argv(cfg: dict, steps: int, lr: float, clip: float, seed: int = 7):
    argv = ["--model-family", cfg["family"], "--num-layers", str(cfg["num_layers"]),
            "--hidden-size", str(cfg["hidden_size"]), "--num-attention-heads", str(cfg["num_attention_heads"]),
            "--num-query-groups", str(cfg["num_query_groups"]), "--ffn-hidden-size", str(cfg["ffn_hidden_size"]),
            "--seq-length", str(cfg["seq_length"]), "--vocab-size", str(cfg["vocab_size"]),
            "--make-vocab-size-divisible-by", str(cfg.get("divisible_by", 1)),
            "--train-iters", str(steps), "--lr", str(lr), "--lr-decay-style", "constant", "--clip-grad", str(clip),
            "--weight-decay", "0.1", "--seed", str(seed), "--mock-data", "--adam-eps", str(ADAM_EPS)]
    for key, value in cfg.items():  # architecture keys that override the family's
        if key in ("normalization", "position_embedding_type"):
            argv += ["--" + key.replace("_", "-"), value]
        elif key in ("swiglu", "add_bias_linear", "tie_embeddings"):
            argv.append({("swiglu", True): "--swiglu", ("swiglu", False): "--no-swiglu",
                         ("add_bias_linear", True): "--add-bias-linear",
                         ("add_bias_linear", False): "--disable-bias-linear",
                         ("tie_embeddings", True): "--tie-embeddings-and-output-weights",
                         ("tie_embeddings", False): "--untie-embeddings-and-output-weights"}[key, value])
    return argv


def run_plans(rank, world, cfg, plans, steps, lr, clip, extra_argv=()):
    return [run_plan(rank, world, cfg, plan_dict, steps, lr, clip, extra_argv)[1] for plan_dict in plans]


def run_plan(rank, world, cfg, plan_dict, steps, lr, clip, extra_argv=()):
    """(trainer, report) of one plan trained `steps` steps."""
    args = build_parser().parse_args(model_argv(cfg, steps, lr, clip) + list(extra_argv))
    tr = setup(args, Plan.from_dict(plan_dict).validate(world_size=world))
    res = {"params0": gather_model(tr.stage), "losses": [], "grad_norms": [],
           # every FSDP unit of the stage on one set of streams (parallelize._share_streams),
           # whatever DP group it reduces over
           "fsdp_stream_sets": len({id(m._get_fsdp_state()._comm_ctx) for m in tr.model.sharded})}
    for step in range(steps):
        stats = train_step(tr)
        res["losses"].append(reduce_loss(tr, stats.loss_sum).item() if tr.ps.is_last_stage else None)
        res["grad_norms"].append(stats.grad_norm.item())
        res["max_live"] = max(res.get("max_live", 0), stats.max_live_microbatches)
        if step == 0:
            res["grads"] = gather_model(tr.stage, grads=True)
    res["params"] = gather_model(tr.stage)
    return tr, res
