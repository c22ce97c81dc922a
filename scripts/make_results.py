#!/usr/bin/env python
"""Write docs/results.md from the benchmark JSON files, so no figure in it is typed by hand.

    python scripts/make_results.py eval/ --out docs/results.md

Reads eval/matching_*.json, eval/registration_*.json and eval/annotate_*.json (written by scripts/benchmark.py).
"""

import argparse
import json
import platform
import sys
from pathlib import Path


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


def annotate_section(files) -> list[str]:
    lines = ["## Whole-image annotation: counting on test tiles (shipped models)", "",
             "| organ | tiles | cells found / annotated | ours F1 | ours P | ours R | LoG F1 | s / tile | per stage (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_seconds"].items())
        counts = ", ".join(f"{t['n_ours']} / {t['n_truth']}" for t in r["tiles"])
        lines.append(f"| {r['organ']} | {len(r['tiles'])} | {counts} | {pm(r['counting'], 'f1')} | {pm(r['counting'], 'precision')} | "
                     f"{pm(r['counting'], 'recall')} | {pm(r['baselines']['blob_log']['counting'], 'f1')} | "
                     f"{r['seconds_per_tile']:.2f} | {stages} |")
    lines += ["", "Counting rule: Hungarian matching of detected to ground-truth centroids within 12 px.", ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir")
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args(argv)
    d = Path(args.eval_dir)
    lines = ["# Results", "", "Generated by `python scripts/make_results.py eval/` from the JSON that `scripts/benchmark.py` "
             "wrote; mean ± sd over seeds (sd with ddof = 1) or over tiles.", "",
             f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, 2 cores, no GPU; Python "
             f"{platform.python_version()}.", ""]
    for pattern, section in (("matching_*.json", matching_section), ("registration_*.json", registration_section),
                             ("annotate_*.json", annotate_section)):
        files = sorted(d.glob(pattern))
        if files:
            lines += section(files)
    if sorted((d / "ablation").glob("registration_*label*.json")):
        lines += ablation_section(sorted((d / "ablation").glob("registration_*label*.json")))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
