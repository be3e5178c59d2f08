"""Draw docs/design.png: a 2-stage example plan with each unit's TP and DP groups and the points
where the activation is re-laid-out, from the same geometry the runtime uses.

    python tools/draw_design.py [--out docs/design.png]

The groups and exchange sets are computed by megatron_galvatron.layout (Layout.groups,
exchange_sets), so the picture cannot show a rank layout the runtime would not build.
"""
import argparse
import os

from megatron_galvatron.layout import Layout, exchange_sets
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy


def example_plan() -> Plan:
    """8 GPUs, two stages of four; every kind of layout change occurs once."""
    layers = [LayerStrategy(tp=2, tp_consec=True, dp_type="zero2"),
              LayerStrategy(tp=1, dp_type="zero3", checkpoint=True),
              LayerStrategy(tp=2, tp_consec=False, dp_type="ddp", sp=True),
              LayerStrategy(tp=2, tp_consec=False, dp_type="ddp", sp=True),
              LayerStrategy(tp=4, dp_type="ddp", sp=True),
              LayerStrategy(tp=4, dp_type="ddp", sp=True)]
    return Plan(world_size=8, pp_deg=2, pp_division=[3, 3], global_bsz=64, chunks=8, layers=layers,
                vocab=VocabStrategy(tp=2, tp_consec=True, dp_type="zero3"), pipeline_type="1f1b").validate()


def stage_units(plan: Plan, stage: int):
    """(name, strategy) in forward order: the embedding before the first layer, the head after the last."""
    units = [(f"L{i}", plan.layers[i]) for i in plan.stage_layers(stage)]
    if stage == 0:
        units.insert(0, ("embed", plan.vocab))
    if stage == plan.pp_deg - 1:
        units.append(("head", plan.vocab))
    return units


def describe(name: str, s) -> str:
    w = [f"tp{s.tp}"]
    if s.tp > 1:
        w[0] += " consec" if s.tp_consec else " strided"
    if s.sp:
        w.append("sp")
    w.append(s.dp_type)
    if getattr(s, "checkpoint", False):
        w.append("ckpt")
    return name + "\n" + "\n".join(w)


def draw(plan: Plan, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    w = plan.stage_world
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(15, 7.2))
    ax.set_axis_off()
    col_w, row_h, gap = 1.35, 0.8, 0.55
    stage_x0 = [0.0, 4 * (col_w + gap) + 1.6]
    rank_y = [3 - i for i in range(w)]  # local rank 0 on top
    for stage in range(plan.pp_deg):
        x0 = stage_x0[stage]
        base = stage * w
        ranks = list(range(base, base + w))
        units = stage_units(plan, stage)
        ax.text(x0 - 0.45, 4.95, f"stage {stage}: ranks {ranks[0]}-{ranks[-1]}", fontsize=12, weight="bold")
        for r in range(w):
            ax.text(x0 - 0.15, rank_y[r] + 0.1, f"rank {base + r}", ha="right", va="center", fontsize=9)
        prev = (Layout.of(plan.vocab.as_layer(), w) if stage == 0 else
                Layout.of(plan.layers[plan.stage_layers(stage)[0] - 1], w))
        for c, (name, s) in enumerate(units):
            lo = Layout.of(s.as_layer() if hasattr(s, "as_layer") else s, w)
            x = x0 + c * (col_w + gap)
            tp_groups, dp_groups = lo.groups(ranks)
            for g_idx, g in enumerate(tp_groups):
                for rank in g:
                    r = rank - base
                    dp_rank, tp_rank = lo.coords(r, w)
                    box = FancyBboxPatch((x, rank_y[r] - 0.2), col_w, row_h - 0.2, boxstyle="round,pad=0.02",
                                         facecolor=cmap(g_idx), alpha=0.55, edgecolor="black", linewidth=0.6)
                    ax.add_patch(box)
                    ax.text(x + col_w / 2, rank_y[r] + 0.1, f"dp{dp_rank} tp{tp_rank}", ha="center", va="center",
                            fontsize=8)
            ax.text(x + col_w / 2, 4.1, describe(name, s), ha="center", va="bottom", fontsize=8.5)
            dp_text = " ".join("{" + ",".join(map(str, g)) + "}" for g in dp_groups)
            ax.text(x + col_w / 2, -0.55, "DP " + dp_text if lo.tp < w else "DP: none (dp = 1)",
                    ha="center", va="top", fontsize=7, wrap=True)
            if c > 0 or stage > 0:
                if lo != prev:
                    sets = exchange_sets(prev, lo, w)
                    xm = x - gap / 2
                    ax.plot([xm, xm], [-0.3, 3.75], color="crimson", linewidth=2.2, linestyle=(0, (4, 2)))
                    label = " ".join("{" + ",".join(str(base + i) for i in m) + "}" for m in sets)
                    ax.text(xm, -1.05, "re-layout\n" + label, ha="center", va="top", fontsize=7.5, color="crimson")
            prev = lo
        if stage < plan.pp_deg - 1:
            xa = x0 + len(units) * (col_w + gap) - gap + 0.05
            for r in range(w):
                ax.annotate("", xy=(stage_x0[stage + 1] - 1.0, rank_y[r] + 0.1), xytext=(xa, rank_y[r] + 0.1),
                            arrowprops=dict(arrowstyle="->", color="dimgray", linewidth=1.2))
            ax.text((xa + stage_x0[stage + 1] - 1.0) / 2, 3.75, "p2p: rank i\nto rank i + 4\n(1F1B)",
                    ha="center", va="bottom", fontsize=8, color="dimgray")
    ax.text(-0.45, 5.55,
            f"world_size {plan.world_size}, pp_deg {plan.pp_deg}, pp_division {plan.pp_division}, "
            f"global_bsz {plan.global_bsz}, chunks {plan.chunks}, {plan.pipeline_type}", fontsize=10)
    ax.text(-0.45, -2.05,
            "Colour: TP group of each unit (boxes of one colour hold one TP group; 'dp d tp t' is the rank's place in "
            "Layout.coords). Dashed red: the activation is re-laid-out between the two units,\nwithin each exchange "
            "set (layout.exchange_sets). Same layout on both sides of the stage boundary: no re-layout there. "
            "DP groups: the ranks whose gradients one unit's DDP bucket or FSDP2 mesh reduces.",
            fontsize=8, va="top")
    ax.set_xlim(-1.6, stage_x0[-1] + 4 * (col_w + gap) + 0.2)
    ax.set_ylim(-2.6, 5.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("docs", "design.png"))
    args = p.parse_args(argv)
    draw(example_plan(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
