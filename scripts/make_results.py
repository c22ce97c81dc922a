#!/usr/bin/env python
"""Write docs/results.md from the benchmark JSON files, so no figure in it is typed by hand.

    python scripts/make_results.py eval/ --out docs/results.md

Reads eval/matching_*.json, eval/registration_*.json and eval/annotate_*.json (written by scripts/benchmark.py). Also
writes the whole-image report ``eval/report.md`` with its Fig. 3-style bar chart ``eval/fig3.png`` (and a copy of the
chart beside the results page).
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pm(row: dict, key: str, digits: int = 3) -> str:
    value = row[key]["mean"] if isinstance(row[key], dict) else row[key]
    sd = row[key]["sd"] if isinstance(row[key], dict) else row.get(f"{key}_sd")
    return f"{value:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{value:.{digits}f}"


def matching_section(files) -> list[str]:
    lines = ["## Matching (DiffeoInvariantNet, paper Table I)", "",
             "| organ | bank cells | gallery (test cells) | queries | MAP | top-1 | top-3 | train s (CPU) | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    extra = []
    for f in files:
        r = json.loads(f.read_text())
        lines.append(f"| {r['organ']} | {r['n_bank']:.0f} | {r['n_test']} | {r['n_queries']} | {pm(r, 'map')} | "
                     f"{pm(r, 'top1')} | {pm(r, 'top3')} | {pm(r, 'train_seconds', 0)} | "
                     f"{', '.join(map(str, r.get('seeds', [r.get('seed')])))} |")
        gallery = sorted(k for k in r if k.startswith("map_gallery") and not k.endswith("_sd"))
        for key in gallery:
            size = key[len("map_gallery"):]
            extra.append(f"| {r['organ']} | {size} | {pm(r, key)} | {pm(r, 'top1_gallery' + size)} | "
                         f"{pm(r, 'top3_gallery' + size)} |")
    if extra:
        lines += ["", "The same queries against random galleries of a bank's size (10 draws per seed):", "",
                  "| organ | gallery | MAP | top-1 | top-3 |", "|---|---|---|---|---|"] + extra
    lines += ["", "Paper (Breast / Colon / Prostate, its own gallery): MAP .954 / .900 / .876.", ""]
    return lines


def rows_table(rows: dict) -> list[str]:
    keys = ("dice", "iou", "neg_jac_pct", "one_component_pct", "dtheta_deg", "elongated_pct", "ms_per_pair")
    lines = ["| row | Dice | IoU | % folded px | % one component | D_θ (deg, elongated cells) | % elongated | ms / pair |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(pm(row, k, 1 if k == 'ms_per_pair' else 3) for k in keys) + " |")
    return lines


def registration_section(files) -> list[str]:
    lines = ["## Registration (DiffeoMappingNet)", ""]
    for f in files:
        r = json.loads(f.read_text())
        seeds = ", ".join(map(str, r.get("seeds", [r.get("seed")])))
        lines += [f"### {r['organ']}: {r['pairs']} test cells per seed, seeds {seeds}, batch {r['batch_size']}", ""]
        lines += rows_table(r["rows"]) + [""]
        lines += [f"Synthetic shapes ({r['synthetic']['pairs']} pairs per seed, known random diffeomorphism):", ""]
        lines += rows_table(r["synthetic"]["rows"]) + [""]
    return lines


def ablation_section(files) -> list[str]:
    """DiffeoMappingNet trained with and without the Dice label term, otherwise identical (eval/ablation/)."""
    lines = ["## Ablation: the label term of DiffeoMappingNet", "",
             "Both nets trained from scratch for 20 epochs on the default bank with the same settings but the Dice label "
             "weight; scored on Kidney test cells (seed 0) and on synthetic shapes.", "",
             "| label weight | Kidney Dice | Kidney IoU | synthetic Dice | % folded px |", "|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        weight = f.stem.split("label")[-1]
        ours, syn = r["rows"]["ours"], r["synthetic"]["rows"]["ours"]
        lines.append(f"| {weight} | {ours['dice']:.3f} | {ours['iou']:.3f} | {syn['dice']:.3f} | {ours['neg_jac_pct']:.3f} |")
    return lines + [""]


PAPER = {  # DiffKillR paper, 10 % of cells, Breast / Colon / Prostate (not the organs scored here)
    "counting_f1": ".585 / .450 / .531 (transposed polygons; not a bar)", "blob_f1": ".347 / .288 / .298 (idem)",
    "dice_obj": ".62 / .61 / .59", "aji": ".37 / .38 / .30"}
REFERENCE = {  # the reference figures, MoNuSeg test tiles
    "blob_log": "LoG counting F1 ≈ .82-.84", "otsu_watershed": "object Dice ≈ .70-.75, AJI ≈ .51-.56, PQ ≈ .47-.57",
    "hovernet": "fully supervised HoVer-Net: Dice .826, AJI .618, PQ .597",
    "goal": "goal at 10 % labels: counting F1 ≥ .90, object Dice ≥ .82, AJI ≥ .62, PQ ≥ .60"}
METHODS = ("ours", "ours_gt_centroids", "unet", "otsu_watershed", "blob_log")
SEGMENTATION = (("dice_obj", "object Dice"), ("iou_obj", "object IoU"), ("aji", "AJI"), ("pq", "PQ"),
                ("f1_pixel", "pixel F1"))


def method_block(r: dict, name: str) -> dict:
    return r if name == "ours" else r["baselines"][name]


def backbone_section(files) -> list[str]:
    """DiffeoMappingNet backbones trained identically (20 epochs from scratch), scored on the same Kidney pairs."""
    lines = ["## Backbone comparison (DiffeoMappingNet)", "",
             "Each backbone trained from scratch for 20 epochs with `configs/train_mapping.yaml` on the default bank, "
             "then scored on the same 100 Kidney test cells (seed 0) and 50 synthetic pairs.", "",
             "| backbone | Kidney Dice | Kidney IoU | D_θ (deg) | % folded px | synthetic Dice | ms / pair (demons in the same run) |",
             "|---|---|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        ours, syn, demons = r["rows"]["ours"], r["synthetic"]["rows"]["ours"], r["rows"]["demons"]
        lines.append(f"| {f.stem.split('_', 1)[1]} | {ours['dice']:.3f} | {ours['iou']:.3f} | {ours['dtheta_deg']:.1f} | "
                     f"{ours['neg_jac_pct']:.3f} | {syn['dice']:.3f} | {ours['ms_per_pair']:.1f} ({demons['ms_per_pair']:.0f}) |")
    return lines + [""]


def annotate_section(files) -> list[str]:
    """The whole-image tables (issue 5 JSON): counting by both rules, segmentation (instances and the paper's
    connected components), orientation and time, every method of the same run."""
    lines = ["## Whole-image annotation: ours against baselines on the test tiles", ""]
    for f in files:
        r = json.loads(f.read_text())
        if "baselines" not in r or "segmentation" not in r:
            continue
        lines += [f"### {r['organ']}: {r['n_tiles']} test tiles × seeds {', '.join(map(str, r['seeds']))}; bank "
                  f"{r['n_bank']:.0f} cells ({r['fraction']:.0%} of the organ's train cells); models: {r['models']}", "",
                  "mean ± sd over every (seed, tile). Ground-truth nuclei per tile: "
                  + ", ".join(f"{k} {v}" for k, v in r["n_truth_per_tile"].items()) + ".", "",
                  "| method | found / tile | count P | count R | count F1 | paper-rule F1 | "
                  + " | ".join(label for _, label in SEGMENTATION) + " | D_θ (deg) | s / tile |",
                  "|---" * (8 + len(SEGMENTATION)) + "|"]
        for name in METHODS:
            b = method_block(r, name)
            seg = " | ".join(pm(b["segmentation"], k) if "segmentation" in b else "–" for k, _ in SEGMENTATION)
            dtheta = pm(b["orientation"], "dtheta_deg", 1) if "orientation" in b else "–"
            lines.append(f"| {name} | {b['n_per_tile']:.0f} | {pm(b['counting'], 'precision')} | "
                         f"{pm(b['counting'], 'recall')} | {pm(b['counting'], 'f1')} | {pm(b['counting_paper_rule'], 'f1')} | "
                         f"{seg} | {dtheta} | {b['seconds_per_tile']:.2f} |")
        lines += ["", "The paper's protocol (connected components of the binary masks, `segmentation_cc`):", "",
                  "| method | " + " | ".join(label for _, label in SEGMENTATION) + " |", "|---" * (1 + len(SEGMENTATION)) + "|"]
        for name in METHODS:
            b = method_block(r, name)
            if "segmentation_cc" in b:
                lines.append(f"| {name} | " + " | ".join(pm(b["segmentation_cc"], k) for k, _ in SEGMENTATION) + " |")
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_seconds"].items())
        setup = f" Once per folder: {r['setup_seconds']:.2f} s of setup (bank, encoder, archetype embeddings)." \
            if "setup_seconds" in r else ""
        spread = f" ± {r['seconds_per_tile_sd']:.2f}" if "seconds_per_tile_sd" in r else ""
        lines += ["", f"Ours: {r['seconds_per_tile']:.2f}{spread} s / tile; per stage {stages}.{setup} U-Net training "
                  f"on the bank: {r['unet_train_seconds']:.0f} s.", ""]
    lines += ["Beside them (not measured here):", "",
              f"- paper, Breast / Colon / Prostate at 10 %: object Dice {PAPER['dice_obj']}, AJI {PAPER['aji']}; counting F1 "
              f"{PAPER['counting_f1']}, blob {PAPER['blob_f1']};",
              f"- label-free baselines as the issue measured them: {REFERENCE['blob_log']}; Otsu + watershed "
              f"{REFERENCE['otsu_watershed']};", f"- {REFERENCE['hovernet']};", f"- {REFERENCE['goal']}.", "",
              "Counting: `count` is the standard rule (Hungarian matching of centroids within 12 px); `paper-rule` a "
              "detection box matching a nucleus box at IoU ≥ 0.1, greedy and unique (LoG boxes: centre ± σ√2). "
              "Object Dice / IoU are GlaS-style (area-weighted best overlap from both sides), AJI as Kumar et al., "
              "PQ from MONAI's `compute_panoptic_quality` (IoU > 0.5). D_θ: matched nuclei with axis ratio ≥ 1.5.", ""]
    return lines


def speed_section(files) -> list[str]:
    """Inference settings compared in one process (``scripts/speed.py``): seconds per tile by stage, and the ratio of
    each tile's time to the first variant's on the same tile."""
    lines = ["## Speed: inference settings compared in one run (`scripts/speed.py`)", "",
             "Shipped models and bank. Seconds per 1000 × 1000 test tile, mean over tiles of each tile's median over repeats; the variants take "
             "turns on every tile. `ratio` is the mean of each tile's time over the first variant's on the same tile; "
             "register + warp cells/s = cells registered (every proposal) / that stage's seconds.", ""]
    stages = ("detect", "match", "register_warp", "stitch", "total")
    for f in files:
        r = json.loads(f.read_text())
        names = list(r["tiles"])
        base = r["tiles"][names[0]]
        organ = f.stem.split("_", 1)[1].capitalize()
        lines += [f"### {organ}: {len(base)} tiles × {r['repeats']} repeats, device {r['device']}, "
                  f"{r['threads']} threads", "", "| settings | " + " | ".join(stages) + " | ratio | register + warp cells/s |",
                  "|---" * (len(stages) + 3) + "|"]
        for name in names:
            tiles = r["tiles"][name]
            means = [np.mean([t[k] for t in tiles]) for k in stages]
            ratio = np.mean([t["total"] / b["total"] for t, b in zip(tiles, base)])
            rate = np.mean([t["registered"] / t["register_warp"] for t in tiles])
            lines.append(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {ratio:.2f} | {rate:.0f} |")
        lines.append("")
        if r.get("counting"):
            counts = r["counting"]
            lines += ["The same annotation (shipped models and bank) against each tile's ground truth:", "",
                      "| tile | cells found | annotated nuclei | count P | count R | count F1 |", "|---" * 6 + "|"]
            lines += [f"| {c['image_id']} | {c['n_detected']} | {c['n_truth']} | {c['precision']:.3f} | "
                      f"{c['recall']:.3f} | {c['f1']:.3f} |" for c in counts]
            lines += [f"| mean | | | {np.mean([c['precision'] for c in counts]):.3f} | "
                      f"{np.mean([c['recall'] for c in counts]):.3f} | {np.mean([c['f1'] for c in counts]):.3f} |", ""]
    return lines


def figure(files, path: Path) -> Path | None:
    """Bars like the paper's Fig. 3: per organ and metric, each method's mean with its sd; the goal as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(f.read_text()) for f in files]
    results = [r for r in results if "baselines" in r and "segmentation" in r]
    if not results:
        return None
    metrics = (("counting", "f1", "counting F1", 0.90), ("segmentation", "dice_obj", "object Dice", 0.82),
               ("segmentation", "aji", "AJI", 0.62), ("segmentation", "pq", "PQ", 0.60))
    methods = [m for m in METHODS if m != "blob_log"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), sharey=True)
    width = 0.8 / len(methods)
    for ax, (block, key, title, goal) in zip(axes, metrics):
        for i, name in enumerate(methods):
            means = [method_block(r, name)[block][key] for r in results]
            sds = [method_block(r, name)[block][f"{key}_sd"] for r in results]
            ax.bar([o + (i - (len(methods) - 1) / 2) * width for o in range(len(results))], means, width, yerr=sds,
                   capsize=2, label=name)
        ax.axhline(goal, color="k", ls="--", lw=1)
        ax.set_xticks(range(len(results)), [r["organ"] for r in results])
        ax.set_title(f"{title} (goal {goal:.2f})")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args(argv)
    d = Path(args.eval_dir)
    annotate_files = sorted(d.glob("annotate_*.json"))
    if figure(annotate_files, d / "fig3.png"):  # the report beside its JSON, self-contained
        report = ["# Whole-image benchmark report", "", "Generated by `scripts/make_results.py` from "
                  + ", ".join(f"`{f.name}`" for f in annotate_files) + ".", "", "![Fig. 3](fig3.png)", ""]
        (d / "report.md").write_text("\n".join(report + annotate_section(annotate_files)) + "\n")
        print(f"wrote {d / 'report.md'}")
        figure(annotate_files, Path(args.out).parent / "fig3.png")
    lines = ["# Results", "", "Generated by `python scripts/make_results.py eval/` from the JSON that `scripts/benchmark.py` "
             "wrote; mean ± sd over seeds (sd with ddof = 1) or over tiles.", "",
             f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, 2 cores, no GPU; Python "
             f"{platform.python_version()}.", ""]
    for pattern, section in (("matching_*.json", matching_section), ("registration_*.json", registration_section),
                             ("annotate_*.json", annotate_section)):
        files = sorted(d.glob(pattern))
        if files:
            lines += section(files)
    if (Path(args.out).parent / "fig3.png").is_file() and annotate_files:
        lines += ["![Whole-image scores per organ and method (Fig. 3 style)](fig3.png)", ""]
    if sorted((d / "speed").glob("speed_*.json")):
        lines += speed_section(sorted((d / "speed").glob("speed_*.json")))
    if sorted((d / "ablation").glob("backbone_*.json")):
        lines += backbone_section(sorted((d / "ablation").glob("backbone_*.json")))
    if sorted((d / "ablation").glob("registration_*label*.json")):
        lines += ablation_section(sorted((d / "ablation").glob("registration_*label*.json")))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
