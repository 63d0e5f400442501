"""`edgecut bench report`: every variant on one page, accuracy against latency.

One row per model (teacher, students in each format and precision, peers such as MediaPipe):
size, parameters, MACs, p50 at each thread count, IoU on every bench set, the mean over all sets
and over the people sets. The markdown table is for the README and for diffs; the PNG plots mean
IoU against p50 on one thread (log scale), one panel over all sets and one over the people sets,
with the Pareto front drawn: the models that no other model beats on both speed and accuracy.

It composes the two benchmarks rather than re-implementing them: `accuracy.run_accuracy` (with
its prediction cache, so the teacher's hour is spent once) and `latency.run_latency` without the
12 MP and memory runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

PEOPLE_SETS = ("ccp_person", "portrait_eg")


def merge(accuracy: List[dict], latency: List[dict], people_sets: Sequence[str] = PEOPLE_SETS) -> List[dict]:
    """One row per model from the two benchmarks' results (matched by spec, in the given order)."""
    by_spec = {r["spec"]: r for r in latency}
    rows = []
    for a in accuracy:
        lat = by_spec.get(a["spec"], {})
        iou = {name: s.get("iou") for name, s in a["sets"].items()}
        people = [iou[n] for n in people_sets if iou.get(n) is not None]
        rows.append({
            "name": a["name"], "spec": a["spec"], "format": a["format"], "precision": a["precision"],
            "file_bytes": a["file_bytes"], "params": lat.get("params"), "macs": lat.get("macs"),
            "p50_ms": {n: t["p50_ms"] for n, t in lat.get("latency", {}).items()},
            "iou": iou, "mean_iou": a["mean"]["iou"], "mean_mae": a["mean"]["mae"],
            "people_iou": sum(people) / len(people) if people else None,
        })
    return rows


def pareto_front(points: Sequence[tuple], decimals: int = 4) -> List[int]:
    """Indices of the (latency, accuracy) points that no other point beats on both (lower latency
    and higher accuracy, one of them strictly), fastest first.

    Accuracy is compared at the table's precision: a TFLite and an ONNX export of one model differ
    in the 7th decimal of mean IoU, and that must not put the slower one on the front."""
    points = [(t, round(acc, decimals)) for t, acc in points]
    front = []
    for i, (t, acc) in enumerate(points):
        dominated = any((t2 <= t and a2 >= acc) and (t2 < t or a2 > acc) for j, (t2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _label(r: dict) -> str:
    return f"{r['name']} ({r['format']} {r['precision']})"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(rows: List[dict], threads: Sequence[int], sets: Sequence[str]) -> str:
    """The table, with the models on the all-sets Pareto front in bold."""
    points = [(r["p50_ms"].get(str(threads[0])), r["mean_iou"]) for r in rows]
    front = set(pareto_front(points)) if all(None not in p for p in points) else set()
    head = (["Model", "Format", "Prec", "Size (MB)", "Params (M)", "GMACs"]
            + [f"p50 {n}t (ms)" for n in threads] + [f"IoU {s}" for s in sets] + ["mean IoU", "people IoU", "mean MAE"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for i, r in enumerate(rows):
        name = f"**{r['name']}**" if i in front else r["name"]
        cells = [name, r["format"], r["precision"], f"{r['file_bytes'] / 1e6:.2f}",
                 _num(r["params"] and r["params"] / 1e6, ".2f"), _num(r["macs"] and r["macs"] / 1e9, ".2f")]
        cells += [_num(r["p50_ms"].get(str(n)), ".2f") for n in threads]
        cells += [_num(r["iou"].get(s), ".4f") for s in sets]
        cells += [_num(r["mean_iou"], ".4f"), _num(r["people_iou"], ".4f"), _num(r["mean_mae"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Bold: on the Pareto front of mean IoU against p50 on {threads[0]} thread(s). "
                 f"People IoU: mean over {', '.join(PEOPLE_SETS)}.")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: Path, threads: int = 1) -> Optional[Path]:
    """Mean IoU against p50 latency, all sets and people sets side by side; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)
    for ax, key, title in ((axes[0], "mean_iou", "mean IoU, all bench sets"),
                           (axes[1], "people_iou", f"mean IoU, people sets ({', '.join(PEOPLE_SETS)})")):
        pts = [(r["p50_ms"].get(str(threads)), r[key], r) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:        # e.g. a run on --sets without people sets: say so, not an empty legend
            ax.text(0.5, 0.5, "no results for this panel in this run", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
            ax.set_title(title)
            continue
        markers = "osD^vP*Xhp<>"   # students sit close together: colour and marker tell them apart,
        colours = plt.get_cmap("tab20").colors   # and 20 colours, where the default 10 repeat in a full report
        for k, (t, acc, r) in enumerate(pts):
            ax.scatter(t, acc, s=45, zorder=3, marker=markers[k % len(markers)], color=colours[k % len(colours)],
                       label=_label(r))
        front = pareto_front([(t, acc) for t, acc, _ in pts])
        if front:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="gray",
                    zorder=2, label="Pareto front")
        ax.legend(loc="lower right", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(f"p50 inference at the model's resolution, {threads} thread(s) (ms, log)")
        ax.set_ylabel("IoU")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def build_report(models: Sequence[str], sets, threads: Sequence[int] = (1, 2), runs: int = 20,
                 cache_dir=None, teacher_path: Optional[str] = None, progress: bool = True,
                 min_seconds: float = 1.0) -> Dict:
    from . import accuracy, latency

    acc = accuracy.run_accuracy(models, sets, threads=threads[-1], teacher_path=teacher_path,
                                progress=progress, cache_dir=cache_dir)
    lat, _ = latency.run_latency(models, latency.LatencyConfig(
        threads=tuple(threads), runs=runs, min_seconds=min_seconds, teacher_path=teacher_path, measure_rss=False,
        end_to_end=False))
    return {"rows": merge(acc, lat), "accuracy": acc, "latency": lat}
