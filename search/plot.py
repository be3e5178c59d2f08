"""A PNG picture of a plan: the strategy of every layer, and each stage's predicted peak memory."""
from __future__ import annotations

from megatron_galvatron.optional import import_optional
from megatron_galvatron.plan import Plan
from search.strategies import label


def save_plan_picture(plan: Plan, path: str, memory_gb: float = None) -> bool:
    """Draw the plan into ``path``; False (with one line saying how to get it) without matplotlib."""
    matplotlib = import_optional("matplotlib", f"the plan picture {path}", "pip install matplotlib")
    if matplotlib is None:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels = [label(s) for s in plan.layers]
    kinds = sorted(set(labels), key=labels.index)
    cmap = plt.get_cmap("tab20")
    color = {k: cmap(i % 20) for i, k in enumerate(kinds)}

    fig, (ax, mem_ax) = plt.subplots(1, 2, figsize=(max(8.0, 0.12 * len(labels) + 5), 3.6),
                                     gridspec_kw={"width_ratios": [3, 1]})
    for i, (k, s) in enumerate(zip(labels, plan.layers)):
        ax.bar(i, s.tp, width=1.0, color=color[k], edgecolor="black", linewidth=0.3,
               hatch="//" if s.checkpoint else None)
    start = 0
    for n in plan.pp_division[:-1]:
        start += n
        ax.axvline(start - 0.5, color="black", linewidth=1.2)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xlabel("layer (vertical lines: pipeline stages; hatched: checkpointed)")
    ax.set_ylabel("tensor-parallel degree")
    ax.set_yticks(sorted({s.tp for s in plan.layers} | {1}))
    ax.set_title(f"{plan.world_size} GPUs, pp {plan.pp_deg} {plan.pipeline_type}, batch {plan.global_bsz} "
                 f"in {plan.chunks}, vocab {label(plan.vocab)}", fontsize=9)
    ax.legend(handles=[Patch(facecolor=color[k], label=k) for k in kinds], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.0, 1.0) if len(kinds) > 6 else None)

    peaks = plan.predicted.get("peak_mem_gb") or []
    mem_ax.bar(range(len(peaks)), peaks, color="tab:blue")
    if memory_gb:
        mem_ax.axhline(memory_gb, color="tab:red", linestyle="--", label=f"budget {memory_gb:g} GB")
        mem_ax.legend(fontsize=7, loc="lower right")
    mem_ax.set_xlabel("stage")
    mem_ax.set_xticks(range(len(peaks)) if len(peaks) <= 16 else range(0, len(peaks), max(1, len(peaks) // 8)))
    mem_ax.set_ylabel("predicted peak memory (GB)")
    it = plan.predicted.get("iter_time_s")
    if it:
        mem_ax.set_title(f"{it:.3f} s/iter, {plan.predicted.get('tokens_per_s', 0):,.0f} tokens/s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
