"""Predicted vs measured iteration time and peak memory of every plan in a benchmark JSON.

    python tools/plot_validation.py bench.json --out validation.png [--profile-dir prof]

With --profile-dir every plan is priced again on those profiles (e.g. a newer model.json);
otherwise the predictions recorded in the JSON are used. Prints the table (markdown) too.
Plans that ran compiled are priced on --compile-profile-dir, or left out without it.
"""
import argparse
import json



def rows_of(bench: dict, profile_dir=None, compile_profile_dir=None):
    """One row per plan that ran: eager plans priced on `profile_dir`, compiled ones on
    `compile_profile_dir` (left out without it: the eager profile would price other kernels)."""
    from megatron_galvatron.model.config import GPTConfig
    from megatron_galvatron.plan import Plan
    from search.predict import predict
    from megatron_galvatron.profile_format import load_profiles
    cfg = GPTConfig(**bench["model"])
    loaded = {d: load_profiles(d) for d in (profile_dir, compile_profile_dir) if d}
    rows = []
    for r in bench["results"]:
        if not r.get("plan") or r["status"] != "ok":
            continue
        compiled = bool(r["plan"].get("compile")) or r["name"].endswith("+compile")
        prof = compile_profile_dir if compiled else profile_dir
        if compiled and not compile_profile_dir:
            continue
        pred_t, pred_m = r["predicted_iter_time_s"], r["predicted_peak_mem_gb"]
        pred_r = None
        if prof:
            plan = Plan.from_dict(r["plan"])
            plan.compile = compiled
            p = predict(plan, cfg, loaded[prof])
            pred_t, pred_m, pred_r = p.iter_time_s, max(p.stage_allocated) / 2 ** 30, max(p.peak_mem_gb)
        rows.append({"name": r["name"], "time": r["iter_time_s"], "pred_time": pred_t,
                     "mem": r["peak_mem_gb"], "pred_mem": pred_m, "tokens": r["tokens_per_s_per_gpu"],
                     # what the caching allocator held at most (max over ranks), and the prediction
                     "reserved": r.get("peak_reserved_gb") or None, "pred_reserved": pred_r,
                     "retries": r.get("alloc_retries", 0)})
    return rows


def markdown(rows) -> str:
    reserved = all(r["reserved"] and r["pred_reserved"] for r in rows)
    extra = " reserved GB | predicted | error | retries |" if reserved else ""
    out = ["| plan | measured s | predicted s | error | measured GB | predicted GB | error |" + extra,
           "|---|---|---|---|---|---|---|" + ("---|---|---|---|" if reserved else "")]
    for r in rows:
        line = (f"| `{r['name']}` | {r['time']:.4f} | {r['pred_time']:.4f} | "
                f"{100 * (r['pred_time'] / r['time'] - 1):+.1f}% | {r['mem']:.2f} | {r['pred_mem']:.2f} | "
                f"{100 * (r['pred_mem'] / r['mem'] - 1):+.1f}% |")
        if reserved:
            line += (f" {r['reserved']:.2f} | {r['pred_reserved']:.2f} | "
                     f"{100 * (r['pred_reserved'] / r['reserved'] - 1):+.1f}% | {r['retries']} |")
        out.append(line)
    te = [abs(r["pred_time"] / r["time"] - 1) for r in rows]
    me = [abs(r["pred_mem"] / r["mem"] - 1) for r in rows]
    out.append(f"\nmean absolute error: time {100 * sum(te) / len(te):.1f}%, memory {100 * sum(me) / len(me):.1f}%; "
               f"within 5%: time {sum(e <= 0.05 for e in te)}/{len(te)}, memory {sum(e <= 0.05 for e in me)}/{len(me)}")
    return "\n".join(out)


def plot(rows, path: str, title: str) -> bool:
    from megatron_galvatron.optional import import_optional
    matplotlib = import_optional("matplotlib", f"the plot {path}", "pip install matplotlib")
    if matplotlib is None:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, key, unit in ((axes[0], "time", "iteration time (s)"), (axes[1], "mem", "peak allocated (GB)")):
        meas = [r[key] for r in rows]
        pred = [r["pred_" + key] for r in rows]
        hi = max(meas + pred) * 1.08
        ax.plot([0, hi], [0, hi], "k-", lw=0.8)
        ax.fill_between([0, hi], [0, 0.95 * hi], [0, 1.05 * hi], color="g", alpha=0.12, label="within 5%")
        ax.scatter(meas, pred, zorder=3)
        for r, x, y in zip(rows, meas, pred):
            ax.annotate(r["name"].replace(",", " ")[:28], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("measured " + unit)
        ax.set_ylabel("predicted " + unit)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_json")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--profile-dir", default=None, help="price eager plans again on these profiles")
    p.add_argument("--compile-profile-dir", default=None,
                   help="price compiled plans on these profiles (profile_model.py --compile)")
    p.add_argument("--title", default="cost model: predicted vs measured")
    a = p.parse_args()
    from megatron_galvatron.errors import exit_on_user_error
    with exit_on_user_error("plot_validation.py"):
        with open(a.bench_json) as f:
            rows = rows_of(json.load(f), a.profile_dir, a.compile_profile_dir)
        print(markdown(rows))
        if plot(rows, a.out, a.title):
            print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
