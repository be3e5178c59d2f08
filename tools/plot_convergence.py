"""Two training runs' loss curves (pretrain_gpt.py --metrics-json) in one picture, and how far the
second stays from the first over the last iterations.

    python tools/plot_convergence.py bf16.jsonl fp8.jsonl --labels bf16 fp8 --last 500 --out curves.png
"""
import argparse
import json

from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.optional import import_optional

PROG = "plot_convergence.py"


def losses(path: str):
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a metrics JSON-lines file ({e})")
    return {r["iteration"]: r["loss"] for r in rows if "loss" in r}


def smooth(its, values, window: int):
    """Each point the mean of the points in the `window` iterations up to it (single steps differ
    by their batch; a run that logged every N iterations has one point per N)."""
    return [sum(v for j, v in zip(its, values) if i - window < j <= i) /
            sum(1 for j in its if i - window < j <= i) for i in its]


def compare(a: dict, b: dict, last: int):
    """Mean and largest relative difference of b to a over their last `last` iterations."""
    its = sorted(set(a) & set(b))
    if len(its) < 2 or its[-1] - its[0] < last:
        raise UserError(f"the runs share iterations {its[:1]}..{its[-1:]}: fewer than --last {last} of them")
    sa, sb = smooth(its, [a[i] for i in its], 50), smooth(its, [b[i] for i in its], 50)
    tail = [k for k, i in enumerate(its) if i > its[-1] - last]
    rel = [abs(sb[k] / sa[k] - 1) for k in tail]
    return its, sa, sb, sum(rel) / len(rel), max(rel)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--labels", nargs=2, default=["first", "second"])
    p.add_argument("--last", type=int, default=500)
    p.add_argument("--out", default=None, help="PNG to draw")
    args = p.parse_args(argv)
    with exit_on_user_error(PROG):
        its, sa, sb, mean, worst = compare(losses(args.first), losses(args.second), args.last)
        print(f"over the last {args.last} iterations (means over 50 iterations): {args.labels[1]} within "
              f"{100 * worst:.2f} % of {args.labels[0]} (mean {100 * mean:.2f} %); final "
              f"{sa[-1]:.4f} vs {sb[-1]:.4f}")
        mpl = import_optional("matplotlib", f"the plot {args.out}", "pip install matplotlib") if args.out else None
        if mpl is None:
            return
        mpl.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for ys, label in ((sa, args.labels[0]), (sb, args.labels[1])):
            ax.plot(its, ys, label=label, linewidth=1.2)
        ax.axvspan(its[-1] - args.last, its[-1], color="grey", alpha=0.12, label=f"last {args.last}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss (logged iterations, 50-iteration means)")
        ax.set_title(f"{args.labels[1]} within {100 * worst:.2f} % of {args.labels[0]} over the last {args.last}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
