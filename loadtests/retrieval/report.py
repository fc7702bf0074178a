"""The retrieval benchmark's figure (recall against QPS per family) and markdown section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.harness.report import figure
from loadtests.retrieval.indexes import KNOB


def plot(result: dict[str, Any], path: Path) -> None:
    with figure(path, 2, (12, 4.8), sharey=True) as axes:
        exact = result["exact"]
        for ax, key in zip(axes, ("b1", "batched"), strict=True):
            for family, data in result["families"].items():
                pts = data["sweep"]
                qps = [p[key]["qps"] for p in pts]
                rec = [p["recall@10"] for p in pts]
                (line,) = ax.plot(qps, rec, marker="o", ms=3, label=f"{family} ({data['params']})")
                for p, x, y in zip(pts, qps, rec, strict=True):
                    label = str(p[KNOB[family]])
                    ax.annotate(label, (x, y), fontsize=6, xytext=(2, -8), textcoords="offset points")
                if data.get("chosen"):
                    c = data["chosen"]
                    ax.plot([c[key]["qps"]], [c["recall@10"]], marker="*", ms=13, color=line.get_color())
            ax.plot([exact[key]["qps"]], [exact["recall@10"]], "ks", ms=8, label="exact (IndexFlatIP)")
            ax.axhline(result["config"]["target_recall"], color="grey", ls="--", lw=1, label="recall 0.95")
            if key == "b1":
                ax.axvline(10 * exact[key]["qps"], color="red", ls=":", lw=1, label="10x exact QPS")
            ax.set_xscale("log")
            ax.set_xlabel("queries/s, one thread (log)")
            batch = result["config"]["batch"]
            ax.set_title("batch 1 (as served)" if key == "b1" else f"batch {batch}")
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel(f"recall@{result['config']['k']} vs exact")
        axes[0].legend(fontsize=7, loc="lower left")
        cfg = result["config"]
        data = f"{cfg['items']:,} x {cfg['dim']} synthetic items, {cfg['queries']} queries, k={cfg['k']}"
        axes[0].figure.suptitle(f"FAISS on {data}")


def markdown(result: dict[str, Any]) -> str:
    cfg, exact = result["config"], result["exact"]
    mb = 2**20
    rows = [
        "| index | setting | build s | index MB | recall@10 | QPS b1 | p50 / p99 ms b1 | "
        f"QPS b{cfg['batch']} | speedup b1 | speedup b{cfg['batch']} |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        f"| exact | IndexFlatIP | {exact['build_s']:.1f} | {exact['index_bytes'] / mb:.0f} | "
        f"{exact['recall@10']:.3f} | {exact['b1']['qps']:.1f} | {exact['b1']['p50_ms']:.2f} / "
        f"{exact['b1']['p99_ms']:.2f} | {exact['batched']['qps']:.1f} | 1.0x | 1.0x |",
    ]
    for family, data in result["families"].items():
        point = data["chosen"] or max(data["sweep"], key=lambda p: p["recall@10"])
        note = "" if data["chosen"] else " (best swept; below target)"
        rows.append(
            f"| {family} | {data['params']}, {KNOB[family]}={point[KNOB[family]]}{note} | "
            f"{data['build_s']:.1f} | {data['index_bytes'] / mb:.0f} | {point['recall@10']:.3f} | "
            f"{point['b1']['qps']:.0f} | "
            f"{point['b1']['p50_ms']:.2f} / {point['b1']['p99_ms']:.2f} | {point['batched']['qps']:.0f} | "
            f"{point['speedup_b1']:.1f}x | {point['speedup_batched']:.1f}x |"
        )
    best = result["chosen"]
    if best:
        family, point = best["family"], best
        verdict = (
            f"**Target {'met' if result['target_met'] else 'NOT met'}**: the cheapest setting reaching "
            f"recall@10 >= {cfg['target_recall']} is {family} ({result['families'][family]['params']}, "
            f"{KNOB[family]}={point[KNOB[family]]}): recall@10 {point['recall@10']:.3f} at "
            f"{point['b1']['qps']:.0f} QPS one query at a time, {point['speedup_b1']:.1f}x exact "
            f"({exact['b1']['qps']:.1f} QPS); batched by {cfg['batch']} the speedup is "
            f"{point['speedup_batched']:.1f}x, since exact search turns into a matrix product."
        )
        depth = result["families"][family].get("serving_depth")
        if depth:
            at = depth["at_chosen"]
            verdict += (
                f" At the service's depth (k={depth['k']} candidates) that setting has recall@{depth['k']} "
                f"{at['recall']:.3f} ({at['qps']:.0f} QPS, exact {result['exact_serving_depth']['qps']:.1f})."
            )
    else:
        verdict = (
            f"**Target NOT met**: no swept ANN setting reached recall@10 >= {cfg['target_recall']} at >= 10x "
            "the exact QPS."
        )
    served = result["served"]
    verdict += (
        f" training/index.py serves exact search up to {served['exact_max_items']:,} items and "
        f"{served['ann']} above."
    )
    intro = (
        f"{cfg['items']:,} synthetic L2-normalized items x {cfg['dim']} dims ({cfg['clusters']} Gaussian "
        f"clusters, calibrated on the trained ml-100k embeddings), {cfg['queries']} user-like queries, inner "
        f"product, k={cfg['k']}; searches on {cfg['search_threads']} FAISS thread, builds on "
        f"{cfg['build_threads']}. Speedups are QPS ratios to exact search measured in the same run; run time "
        f"{result['total_s']:.0f} s."
    )
    ed = result["exact_serving_depth"]
    depth_rows = [
        f"| index (k={cfg['serving_k']}, batch 1) | setting | recall@{cfg['serving_k']} | QPS | "
        "p50 / p99 ms | speedup |",
        "|---|---|--:|--:|--:|--:|",
        f"| exact | IndexFlatIP | 1.000 | {ed['qps']:.1f} | {ed['p50_ms']:.2f} / {ed['p99_ms']:.2f} | 1.0x |",
    ]
    for family, data in result["families"].items():
        depth = data.get("serving_depth")
        if not depth:
            continue
        point = depth["chosen"] or depth["sweep"][-1]
        note = "" if depth["chosen"] else " (best swept; below target)"
        depth_rows.append(
            f"| {family} | {KNOB[family]}={point[KNOB[family]]}{note} | {point['recall']:.3f} | "
            f"{point['qps']:.0f} | {point['p50_ms']:.2f} / {point['p99_ms']:.2f} | {point['speedup']:.1f}x |"
        )
    depth_intro = (
        f"The service asks FAISS for {cfg['serving_k']} candidates, not 10: the cheapest setting per family "
        f"with recall@{cfg['serving_k']} >= {cfg['target_recall']} against the exact top-{cfg['serving_k']} "
        "(first queries of the set):"
    )
    return "\n".join([intro, "", *rows, "", verdict, "", depth_intro, "", *depth_rows])
