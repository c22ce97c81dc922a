"""report: the pages made from the benchmarks' artifacts, so that no figure in them is typed by hand
(``scripts/make_results.py``).

* ``docs/results.md``: every table, from eval/matching_*.json, eval/registration_*.json, eval/annotate_*.json,
  eval/speed/*.json and eval/ablation/*.json;
* ``eval/report.md``: the whole-image report with its Fig. 3-style bar chart ``eval/fig3.png`` (copied beside the
  results page);
* the generated blocks of the model card ``docs/README.md``, between ``<!-- generated:NAME -->`` and
  ``<!-- /generated:NAME -->``: figures from the artifacts above and from the shipped files in ``models/``.

Each table says which machine measured it, as its artifact recorded (``protocol.machine``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


def pm(row: dict, key: str, digits: int = 3) -> str:
    value = row[key]["mean"] if isinstance(row[key], dict) else row[key]
    sd = row[key]["sd"] if isinstance(row[key], dict) else row.get(f"{key}_sd")
    return f"{value:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{value:.{digits}f}"


def measured_on(r: dict) -> str:
    """The machine a result was measured on, as its artifact recorded it (``protocol.machine``)."""
    m = r.get("machine")
    if not m:
        return "Machine: not recorded in this artifact (measured before v0.7.0)."
    memory = f", {m['memory_gb']:.0f} GB" if m.get("memory_gb") else ""
    return (f"Machine: {m['cores']} × {m['machine']} cores ({m['cpu']}){memory}, GPU {m['gpu'] or 'none'}; torch "
            f"{m['torch']} with {m['torch_threads']} threads, Python {m['python']}.")


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
    lines += ["", "Paper (Breast / Colon / Prostate, its own gallery; quoted, not measured here): MAP .954 / .900 / "
              ".876.", ""] + [f"{f.name}: {measured_on(json.loads(f.read_text()))}" for f in files] + [""]
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
        lines += [f"### {tiles_of(r)}: {r['pairs']} test cells per seed, seeds {seeds}, batch {r['batch_size']}", ""]
        lines += rows_table(r["rows"]) + [""]
        lines += [f"Synthetic shapes ({r['synthetic']['pairs']} pairs per seed, known random diffeomorphism):", ""]
        lines += rows_table(r["synthetic"]["rows"]) + ["", measured_on(r), ""]
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
REFERENCE = {  # quoted, not measured here: MoNuSeg test tiles
    "hovernet": "fully supervised HoVer-Net: Dice .826, AJI .618, PQ .597",
    "generalist": "a generalist trained on another public data set, never on MoNuSeg, with no annotation: detection F1 "
                  "≈ .87, binary Dice ≈ .83, binary PQ ≈ .67",
    "goal": "goal at 10 % labels: counting F1 ≥ .90, object Dice ≥ .82, AJI ≥ .65, PQ ≥ .68"}
GOAL = {"f1": 0.90, "dice_obj": 0.82, "aji": 0.65, "pq": 0.68}
METHODS = ("ours", "ours_gt_centroids", "student", "ours_no_refine", "ours_no_student", "unet", "otsu_watershed",
           "blob_log")
SEGMENTATION = (("dice_obj", "object Dice"), ("iou_obj", "object IoU"), ("aji", "AJI"), ("pq", "PQ"),
                ("f1_pixel", "pixel F1"))


def method_block(r: dict, name: str) -> dict:
    return r if name == "ours" else r["baselines"][name]


def methods_in(r: dict) -> list[str]:
    """The methods a whole-image result holds, in ``METHODS`` order."""
    return [m for m in METHODS if m == "ours" or m in r["baselines"]]


def unseen_organs(r: dict) -> list[str]:
    """The organs a whole-image result scored that its bank never drew from (none for an organ's own test tiles)."""
    return [o for o in r.get("test_organs", []) if o and o.lower() != r["organ"].lower()]


def tiles_of(r: dict) -> str:
    """What a whole-image result scored: an organ's test tiles, or organs its bank never saw ("Bladder + Brain")."""
    return " + ".join(unseen_organs(r)) or r["organ"]


def bar_of(r: dict) -> dict:
    """The issue's bar for a result: count F1 >= the better of LoG and the watershed + .03; object Dice, AJI and PQ
    >= the watershed + .03. {metric: (ours, bar)}."""
    ws, log = r["baselines"]["otsu_watershed"], r["baselines"].get("blob_log")
    best_count = max(ws["counting"]["f1"], log["counting"]["f1"] if log else 0.0)
    out = {"f1": (r["counting"]["f1"], best_count + 0.03)}
    for key in ("dice_obj", "aji", "pq"):
        out[key] = (r["segmentation"][key], ws["segmentation"][key] + 0.03)
    return out


def backbone_section(files) -> list[str]:
    """DiffeoMappingNet backbones trained identically (20 epochs from scratch), scored on the same Kidney pairs."""
    lines = ["## Backbone comparison (DiffeoMappingNet)", "",
             "Each backbone trained from scratch for 20 epochs with the mapping training config on the default bank, "
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
        unseen = " (organs no bank cell came from)" if unseen_organs(r) else ""
        lines += [f"### {tiles_of(r)}{unseen}: {r['n_tiles']} test tiles × seeds {', '.join(map(str, r['seeds']))}; bank "
                  f"{r['n_bank']:.0f} cells ({r['fraction']:.0%} of the train cells of "
                  f"{'the organ' if r['organ'] != 'all' else 'every train organ'}); models: {r['models']}", "",
                  "mean ± sd over every (seed, tile). Ground-truth nuclei per tile: "
                  + ", ".join(f"{k} {v}" for k, v in r["n_truth_per_tile"].items()) + ".", "",
                  "| method | found / tile | count P | count R | count F1 | paper-rule F1 | "
                  + " | ".join(label for _, label in SEGMENTATION) + " | D_θ (deg) | s / tile |",
                  "|---" * (8 + len(SEGMENTATION)) + "|"]
        for name in methods_in(r):
            b = method_block(r, name)
            seg = " | ".join(pm(b["segmentation"], k) if "segmentation" in b else "–" for k, _ in SEGMENTATION)
            dtheta = pm(b["orientation"], "dtheta_deg", 1) if "orientation" in b else "–"
            lines.append(f"| {name} | {b['n_per_tile']:.0f} | {pm(b['counting'], 'precision')} | "
                         f"{pm(b['counting'], 'recall')} | {pm(b['counting'], 'f1')} | {pm(b['counting_paper_rule'], 'f1')} | "
                         f"{seg} | {dtheta} | {b['seconds_per_tile']:.2f} |")
        lines += ["", "The paper's protocol (connected components of the binary masks, `segmentation_cc`):", "",
                  "| method | " + " | ".join(label for _, label in SEGMENTATION) + " |", "|---" * (1 + len(SEGMENTATION)) + "|"]
        for name in methods_in(r):
            b = method_block(r, name)
            if "segmentation_cc" in b:
                lines.append(f"| {name} | " + " | ".join(pm(b["segmentation_cc"], k) for k, _ in SEGMENTATION) + " |")
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_seconds"].items())
        setup = f" Once per folder: {r['setup_seconds']:.2f} s of setup (bank, encoder, archetype embeddings)." \
            if "setup_seconds" in r else ""
        spread = f" ± {r['seconds_per_tile_sd']:.2f}" if "seconds_per_tile_sd" in r else ""
        archetypes = (f" Archetypes answering per tile: {pm(r['archetypes'], 'distinct', 1)} distinct; the busiest "
                      f"takes {pm(r['archetypes'], 'busiest_share')} of a tile's cells." if "archetypes" in r else "")
        bar = bar_of(r)
        verdict = "; ".join(f"{k} {v:.3f} {'≥' if v >= b else '<'} {b:.3f}" for k, (v, b) in bar.items())
        lines += ["", f"Ours: {r['seconds_per_tile']:.2f}{spread} s / tile; per stage {stages}.{setup}{archetypes} "
                  f"U-Net training on the bank: {r['unet_train_seconds']:.0f} s.", "",
                  f"The bar (count F1 ≥ best of LoG and watershed + .03; the rest ≥ watershed + .03): {verdict}.", "",
                  measured_on(r), ""]
    lines += ["Beside them (quoted, not measured here):", "",
              f"- paper, Breast / Colon / Prostate at 10 %: object Dice {PAPER['dice_obj']}, AJI {PAPER['aji']}; counting F1 "
              f"{PAPER['counting_f1']}, blob {PAPER['blob_f1']};",
              f"- {REFERENCE['generalist']};", f"- {REFERENCE['hovernet']};", f"- {REFERENCE['goal']}.", "",
              "Counting: `count` is the standard rule (Hungarian matching of centroids within 12 px); `paper-rule` a "
              "detection box matching a nucleus box at IoU ≥ 0.1, greedy and unique (LoG boxes: centre ± σ√2). "
              "Object Dice / IoU are GlaS-style (area-weighted best overlap from both sides), AJI as Kumar et al., "
              "PQ from MONAI's `compute_panoptic_quality` (IoU > 0.5). D_θ: matched nuclei with axis ratio ≥ 1.5.", ""]
    return lines


def speed_section(files) -> list[str]:
    """Inference settings compared in one process (``scripts/benchmark.py speed``): seconds per tile by stage, and the ratio of
    each tile's time to the first variant's on the same tile."""
    lines = ["## Speed: inference settings compared in one run (`scripts/benchmark.py speed`)", "",
             "Shipped models and bank. Seconds per 1000 × 1000 test tile, mean over tiles of each tile's median over repeats; the variants take "
             "turns on every tile. `ratio` is the mean of each tile's time over the first variant's on the same tile; "
             "register + warp cells/s = cells registered (every proposal) / that stage's seconds.", ""]
    stages = ("detect", "match", "register_warp", "refine", "stitch", "total")
    for f in files:
        r = json.loads(f.read_text())
        names = list(r["tiles"])
        base = r["tiles"][names[0]]
        organ = f.stem.split("_", 1)[1].capitalize()
        compiled = (f" Compiling the encoder took {r['compile_seconds']:.1f} s once (`compile: true`)."
                    if r.get("compile_seconds") is not None else "")
        lines += [f"### {organ}: {len(base)} tiles × {r['repeats']} repeats, device {r['device']}, "
                  f"{r['threads']} threads", "", measured_on(r) + compiled, "",
                  "| settings | " + " | ".join(stages) + " | ratio | register + warp cells/s |",
                  "|---" * (len(stages) + 3) + "|"]
        for name in names:
            tiles = r["tiles"][name]
            means = [np.mean([t.get(k, 0.0) for t in tiles]) for k in stages]
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
    metrics = (("counting", "f1", "counting F1", GOAL["f1"]), ("segmentation", "dice_obj", "object Dice", GOAL["dice_obj"]),
               ("segmentation", "aji", "AJI", GOAL["aji"]), ("segmentation", "pq", "PQ", GOAL["pq"]))
    methods = ["ours", "ours_gt_centroids", "student", "ours_no_student", "unet", "otsu_watershed"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), sharey=True)
    width = 0.8 / len(methods)
    for ax, (block, key, title, goal) in zip(axes, metrics):
        for i, name in enumerate(methods):
            means = [method_block(r, name)[block][key] for r in results]
            sds = [method_block(r, name)[block][f"{key}_sd"] for r in results]
            ax.bar([o + (i - (len(methods) - 1) / 2) * width for o in range(len(results))], means, width, yerr=sds,
                   capsize=2, label=name)
        ax.axhline(goal, color="k", ls="--", lw=1)
        ax.set_xticks(range(len(results)), [tiles_of(r) for r in results])
        ax.set_title(f"{title} (goal {goal:.2f})")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




# ----------------------------------------------------------------------------------------------------------------------
# docs/results.md and eval/report.md


def effort_results(eval_dir: Path) -> dict:
    """{organ: [result, ...] by bank fraction} of the annotation-effort runs, ``eval/effort/annotate_*_f*.json``."""
    out = {}
    for f in sorted((eval_dir / "effort").glob("annotate_*_f*.json")):
        r = json.loads(f.read_text())
        out.setdefault(r["organ"], []).append(r)
    for organ, rs in out.items():  # the 10 % point is the organ's main run (same protocol, every method)
        main = eval_dir / f"annotate_{organ.lower()}.json"
        if main.is_file() and all(r["fraction"] != 0.1 for r in rs):
            rs.append(json.loads(main.read_text()))
    return {organ: sorted(rs, key=lambda r: r["fraction"]) for organ, rs in out.items()}


EFFORT_METRICS = (("counting", "f1", "count F1"), ("segmentation", "dice_obj", "object Dice"),
                  ("segmentation", "aji", "AJI"), ("segmentation", "pq", "PQ"))


def effort_figure(eval_dir: Path, path: Path) -> Path | None:
    """The annotation-effort curve: per organ and metric, ours and the bank-trained U-Net against the bank's size, the
    label-free watershed as a flat line (its mean over the runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results = effort_results(eval_dir)
    if not results:
        return None
    fig, axes = plt.subplots(len(results), len(EFFORT_METRICS), figsize=(3.4 * len(EFFORT_METRICS),
                                                                           2.9 * len(results)), squeeze=False)
    for row, (organ, rs) in zip(axes, results.items()):
        cells = [r["n_bank"] for r in rs]
        for ax, (block, key, title) in zip(row, EFFORT_METRICS):
            for name, style in (("ours", "o-"), ("unet", "s--")):
                if name != "ours" and name not in rs[0]["baselines"]:
                    continue
                means = [method_block(r, name)[block][key] for r in rs]
                sds = [method_block(r, name)[block][f"{key}_sd"] for r in rs]
                ax.errorbar(cells, means, yerr=sds, fmt=style, capsize=2, label=name if name == "ours" else "U-Net")
            ws = np.mean([r["baselines"]["otsu_watershed"][block][key] for r in rs])
            ax.axhline(ws, color="grey", ls=":", label="watershed (no labels)")
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the banks' own ticks
            ax.set_xticks(cells, [f"{r['fraction']:.0%}\n{c:.0f}" for r, c in zip(rs, cells)], fontsize=7)
            ax.set_title(f"{organ}: {title}", fontsize=9)
            ax.set_ylim(0.2, 1)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("bank: share of the train cells and cells annotated", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def effort_table(eval_dir: Path) -> list[str]:
    lines = ["| organ | bank | cells | method | " + " | ".join(t for _, _, t in EFFORT_METRICS) + " |",
             "|---" * (4 + len(EFFORT_METRICS)) + "|"]
    for organ, rs in effort_results(eval_dir).items():
        for r in rs:
            for name in ("ours", "unet", "otsu_watershed"):
                if name != "ours" and name not in r["baselines"]:
                    continue
                b = method_block(r, name)
                lines.append(f"| {organ} | {r['fraction']:.0%} | {r['n_bank']:.0f} | {name} | "
                             + " | ".join(pm(b[block], key) for block, key, _ in EFFORT_METRICS) + " |")
    return lines


def report_text(eval_dir: Path) -> str:
    """eval/report.md: the whole-image tables beside their JSON, with the Fig. 3-style chart."""
    files = sorted(eval_dir.glob("annotate_*.json"))
    report = ["# Whole-image benchmark report", "", "Generated by `scripts/make_results.py` from "
              + ", ".join(f"`{f.name}`" for f in files) + ".", "", "![Fig. 3](fig3.png)", ""]
    return "\n".join(report + annotate_section(files)) + "\n"


def results_text(eval_dir: Path) -> str:
    """docs/results.md: every table, from every artifact of ``eval_dir``."""
    lines = ["# Results", "", "Generated by `python scripts/make_results.py` from the artifacts that the commands of "
             "`scripts/run_benchmarks.sh` wrote to `eval/`; mean ± sd over seeds (sd with ddof = 1) or over tiles. Each "
             "table names the machine its artifact recorded.", ""]
    for pattern, section in (("matching_*.json", matching_section), ("registration_*.json", registration_section),
                             ("annotate_*.json", annotate_section)):
        files = sorted(eval_dir.glob(pattern))
        if files:
            lines += section(files)
    if sorted(eval_dir.glob("annotate_*.json")):
        lines += ["![Whole-image scores per organ and method (Fig. 3 style)](fig3.png)", ""]
    if effort_results(eval_dir):
        lines += ["## Annotation effort: banks of 2, 5, 10 and 25 % of the train cells", "",
                  "Shipped networks and student; per bank its own seeded draw (seeds "
                  + ", ".join(map(str, next(iter(effort_results(eval_dir).values()))[0]["seeds"]))
                  + "); the U-Net trains on each bank; mean ± sd over every (seed, tile) "
                  "(`eval/effort/`).", ""] + effort_table(eval_dir) + ["", "![Annotation effort](effort.png)", ""]
    for pattern, section in (("speed/speed_*.json", speed_section), ("ablation/backbone_*.json", backbone_section),
                             ("ablation/registration_*label*.json", ablation_section)):
        files = sorted(eval_dir.glob(pattern))
        if files:
            lines += section(files)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# The model card's generated blocks

BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def render_card(text: str, root: Path) -> str:
    """The model card ``text`` with every generated block rewritten from the artifacts under ``root``."""
    blocks = {"sizes": sizes_block, "calibration": calibration_block, "models": models_block,
              "headline": headline_block, "speed": speed_block, "tuning": tuning_block, "effort": effort_block,
              "serve": serve_block, "mosaic": mosaic_block, "reliability": reliability_block,
              "validation": validation_block,
              "validation_folds": lambda root: validation_block(root, "validation_folds.json")}

    def fill(match):
        name = match.group("name")
        if name not in blocks:
            raise ValueError(f"the model card names an unknown generated block {name!r}; known: {sorted(blocks)}")
        return match.group(1) + blocks[name](root).rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(fill, text)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(path: str, command: str) -> str:
    return f"*No artifact `{path}`: run `{command}`.*\n"


def sizes_block(root: Path) -> str:
    r = _load(root / "eval" / "nucleus_sizes.json")
    if r is None:
        return _missing("eval/nucleus_sizes.json", "python scripts/benchmark.py sizes --data-dir DATA")
    p = r["percentiles"]
    return (f"Largest extent of the {r['n_nuclei']:,} annotated nuclei of the {r['n_images']} tiles of "
            f"`{r['data']}`: median {p['50']:.0f} px, 90th percentile {p['90']:.0f} px, 95th {p['95']:.0f} px, 99th "
            f"{p['99']:.0f} px, largest {r['max']:.0f} px. A 64 px patch holds {r['share_within']['64']:.1%} of them "
            f"whole; a 32 px window clips {1 - r['share_within']['32']:.0%} (`eval/nucleus_sizes.json`).\n")


def calibration_block(root: Path) -> str:
    import torch

    meta = torch.load(root / "models" / "archetype_bank.pt", map_location="cpu", weights_only=True)["meta"]
    params, grid = meta["proposals"], meta.get("proposals_grid", [])
    lines = [f"Shipped bank (`models/archetype_bank.pt`, `meta[\"proposals\"]`): opening {params['opening_radius']} px, marker "
             f"spacing {params['min_distance']} px, speck floor {params['min_size']} px; {meta['proposals_found']:.1%} "
             "of its cells hold exactly one proposal. Every point tried:", "",
             "| opening (px) | spacing (px) | bank cells holding exactly one proposal | proposals in their images |",
             "|---|---|---|---|"]
    for point, share, n in grid:
        chosen = " (chosen)" if point == params else ""
        lines.append(f"| {point['opening_radius']} | {point['min_distance']} | {share:.3f}{chosen} | {n:,} |")
    return "\n".join(lines) + "\n"


def models_block(root: Path) -> str:
    import torch

    from ..bank import whole_archetypes
    from ..checkpoint import recipe_of

    models = root / "models"
    bank = torch.load(models / "archetype_bank.pt", map_location="cpu", weights_only=True)
    meta = bank["meta"]
    organs = {}
    for organ in bank["organs"]:
        organs[organ or "unknown"] = organs.get(organ or "unknown", 0) + 1
    composition = ", ".join(f"{k} {v}" for k, v in sorted(organs.items(), key=lambda kv: -kv[1]))

    def size(name):
        return f"{(models / name).stat().st_size / 1e6:.1f} MB"

    def parameters(name):
        state = torch.load(models / name, map_location="cpu", weights_only=True)["model"]
        unique = {id(t): t for t in state.values()}  # a module registered twice shares its tensors
        return sum(t.numel() for t in unique.values())

    pixel = "" if meta.get("pixel_size_um") is None else f", {meta['pixel_size_um']} µm per pixel"
    lines = ["| file | what | size |", "|---|---|---|",
             f"| `archetype_bank.pt` | {len(bank['images'])} archetypes: seed {meta['seed']}, {meta['fraction']:.0%} of the "
             f"{meta['n_candidates']:,} annotated cells of the {meta['n_images']} {meta['split']} images of "
             f"`{meta['source']}` ({composition}){pixel}; {int(whole_archetypes(bank).sum())} are whole nuclei that serve as "
             f"archetypes, all are ground truth for the student | {size('archetype_bank.pt')} |",
             f"| `invariant.pt` | DiffeoInvariantNet, {parameters('invariant.pt') / 1e6:.2f} M parameters | "
             f"{size('invariant.pt')} |",
             f"| `model.pt` | DiffeoMappingNet, {parameters('model.pt') / 1e3:.1f} k parameters; the bundle's "
             f"`network_def` | {size('model.pt')} |"]
    if (models / "student.pt").is_file():
        student = torch.load(models / "student.pt", map_location="cpu", weights_only=True)
        rounds = "; ".join(f"round {h['round']}: {h['confident_cells']:,} confident of {h['teacher_cells']:,} cells "
                           f"+ {h['bank_cells']} bank cells, {h['labelled_pixels']:.0%} of pixels labelled, "
                           f"{h['train_seconds'] / 60:.1f} min" for h in student["history"])
        lines.append(f"| `student.pt` | the student (BasicUNet), {parameters('student.pt') / 1e6:.2f} M parameters, "
                     f"self-trained on the train images in {student['seconds'] / 60:.0f} min ({rounds}) | "
                     f"{size('student.pt')} |")
    lines += ["",
             "The recipe stored in each shipped network (`bundle.checkpoint.recipe_of`), equal to the defaults of its "
             "training config (`tests/test_bundle_configs.py` holds them to it):", ""]
    if (models / "student.pt").is_file():
        values = ", ".join(f"{k} {v}" for k, v in recipe_of(models / "student.pt").items())
        lines.append(f"- `student.pt` (`configs/selftrain.yaml`): {values}")
    for name in ("invariant.pt", "model.pt"):
        recipe = recipe_of(models / name)
        chain = []
        while recipe is not None:
            chain.append(recipe)
            recipe = recipe.get("pretrained")
        for stage, recipe in enumerate(reversed(chain), 1):
            values = ", ".join(f"{k} {v}" for k, v in recipe.items() if k != "pretrained")
            start = "random initialisation" if stage == 1 else f"the weights of stage {stage - 1}"
            lines.append(f"- `{name}`, stage {stage} (from {start}): {values}")
    return "\n".join(lines) + "\n"


def headline_block(root: Path) -> str:
    eval_dir = root / "eval"
    lines = []
    annotate = [r for r in (_load(f) for f in sorted(eval_dir.glob("annotate_*.json"))) if r and "baselines" in r]
    if annotate:
        lines += ["Whole test images, every (seed, tile), mean ± sd (`eval/annotate_*.json`; all methods in "
                  "[results.md](results.md)):", "",
                  "| organ | method | count F1 | object Dice | AJI | PQ | s / tile |", "|---|---|---|---|---|---|---|"]
        for r in annotate:
            for name in ("ours", "ours_gt_centroids", "student", "otsu_watershed", "blob_log"):
                if name not in methods_in(r):
                    continue
                b = method_block(r, name)
                seg = [pm(b["segmentation"], k) if "segmentation" in b else "–" for k in ("dice_obj", "aji", "pq")]
                lines.append(f"| {tiles_of(r)} | {name} | {pm(b['counting'], 'f1')} | " + " | ".join(seg)
                             + f" | {b['seconds_per_tile']:.2f} |")
            bar = bar_of(r)
            lines.append(f"| {tiles_of(r)} | *bar* | " + " | ".join(
                f"{b:.3f} {'met' if v >= b else 'not met'}" for v, b in bar.values()) + " | |")
        lines += ["", "*bar*: count F1 ≥ the better of LoG and the watershed + .03; object Dice, AJI, PQ ≥ the watershed "
                  "+ .03. Bladder + Brain: organs no bank cell and no network saw. Quoted beside them, not measured "
                  f"here: {REFERENCE['generalist']}; {REFERENCE['goal']}.", ""]
    matching = [r for r in (_load(f) for f in sorted(eval_dir.glob("matching_*.json"))) if r]
    for r in matching:
        gallery = sorted(k for k in r if k.startswith("map_gallery") and not k.endswith("_sd"))
        small = "".join(f"; against galleries of {k[len('map_gallery'):]} cells {pm(r, k)}" for k in gallery)
        lines.append(f"- Matching, {r['organ']}: MAP {pm(r, 'map')} with every annotated test cell of the organ "
                     f"({r['n_test']:,}) as the gallery{small} (`eval/matching_{r['organ'].lower()}.json`).")
    for path in sorted(eval_dir.glob("registration_*.json")):
        r = _load(path)
        rows = r["rows"]
        others = ", ".join(f"{name} {pm(rows[name], 'dice')}" for name in ("demons", "ants_synonly") if name in rows)
        lines.append(f"- Registration, {tiles_of(r)} ({r['pairs']} test cells per seed, from their matched archetype"
                     f"{', organs no network saw' if unseen_organs(r) else ''}): Dice {pm(rows['ours'], 'dice')} "
                     f"against {others}; {rows['ours']['ms_per_pair']:.1f} ms per pair against demons' "
                     f"{rows['demons']['ms_per_pair']:.0f} ms (`eval/{path.name}`).")
    return "\n".join(lines) + "\n" if lines else _missing("eval/annotate_*.json", "bash scripts/run_benchmarks.sh")


def speed_block(root: Path) -> str:
    files = sorted((root / "eval" / "speed").glob("speed_*.json"))
    if not files:
        return _missing("eval/speed/speed_*.json", "python scripts/benchmark.py speed --data-dir DATA")
    lines = ["| tiles | settings | s / tile | ratio to the first row | detect s | match s | register + warp s | refine s |",
             "|---|---|---|---|---|---|---|---|"]
    compile_seconds, export_seconds = [], []
    for f in files:
        r = json.loads(f.read_text())
        base = next(iter(r["tiles"].values()))
        for name, tiles in r["tiles"].items():
            ratio = np.mean([t["total"] / b["total"] for t, b in zip(tiles, base)])
            lines.append(f"| {f.stem.split('_', 1)[1].capitalize()} | {name} | "
                         f"{np.mean([t['total'] for t in tiles]):.2f} | {ratio:.2f} | "
                         + " | ".join(f"{np.mean([t.get(k, 0.0) for t in tiles]):.2f}"
                                      for k in ("detect", "match", "register_warp", "refine")) + " |")
        if r.get("compile_seconds") is not None:
            compile_seconds.append(r["compile_seconds"])
        if r.get("export_seconds") is not None:
            export_seconds.append(r["export_seconds"])
    lines.append("")
    if compile_seconds:
        lines.append(f"Compiling the encoder (`compile: true`) took {', '.join(f'{s:.1f}' for s in compile_seconds)} s "
                     "once per run.")
    if export_seconds:
        lines.append(f"Exporting the three networks (`scripts/export.py --networks`) took "
                     f"{', '.join(f'{s:.1f}' for s in export_seconds)} s, once.")
    lines.append(measured_on(json.loads(files[0].read_text())) + " (`eval/speed/`)")
    return "\n".join(lines) + "\n"


def serve_block(root: Path) -> str:
    """The MONAI Label app against the workflow it serves, in one session (``scripts/benchmark.py serve``)."""
    files = sorted((root / "eval" / "serve").glob("serve_*.json"))
    if not files:
        return _missing("eval/serve/serve_*.json", "python scripts/benchmark.py serve --data-dir DATA")
    lines = ["| tiles | request | s / tile | ratio to the workflow in process |", "|---|---|---|---|"]
    names = {"workflow": "the workflow in process (what the CLI spends per tile)",
             "infer_asap": "`/infer`, QuPath's polygons (`output=asap`)", "infer_image": "`/infer`, the label TIFF"}
    corrections = []
    for f in files:
        r = json.loads(f.read_text())
        for key, name in names.items():
            ratio = np.mean([t[key] / t["workflow"] for t in r["tiles"]])
            lines.append(f"| {f.stem.split('_', 1)[1].capitalize()} ({len(r['tiles'])}) | {name} | "
                         f"{np.mean([t[key] for t in r['tiles']]):.2f} | {ratio:.2f} |")
        c = r["correction"]
        corrections.append(f"After a correction of all {c['cells']} cells of {c['image_id']}, `/train` took "
                           f"{c['train_seconds']:.1f} s from request to done ({c['bank_update_seconds']:.1f} s of it "
                           f"the bank update, the rest MONAI Label starting its training process), and the next "
                           f"`/infer` of that tile {c['next_infer_seconds']:.2f} s with {c['archetypes_after']} "
                           "archetypes.")
        if "fine_tune_seconds" in c:
            f = c["fine_tuned"]
            corrections.append(f"Asked to fine-tune both networks on that correction (`{{\"fine_tune\": true}}`, "
                               f"{f['epochs']} epochs each on its {f['users_cells']} cells and as many others of the "
                               f"bank), `/train` took {c['fine_tune_seconds']:.0f} s from request to done.")
        if r.get("other_tiles"):
            names = {"shipped": "shipped models", "bank_updated": "after the bank update",
                     "fine_tuned": "after the fine-tuning"}
            corrections += ["", f"The other {len(r['tiles']) - 1} tiles, annotated by the server at each stage "
                            "(mean over the tiles):", "", "| stage | count F1 | object Dice | AJI |", "|---|---|---|---|"]
            corrections += [f"| {names[k]} | {v['f1']:.3f} | {v['dice_obj']:.3f} | {v['aji']:.3f} |"
                            for k, v in r["other_tiles"].items()]
            corrections.append("")
    lines += [""] + corrections + [measured_on(json.loads(files[0].read_text())) + " (`eval/serve/`)"]
    if (root / "docs" / "serve_qupath.png").is_file():
        lines += ["", "![What QuPath shows for a rectangle on the embedded sample](serve_qupath.png)", "",
                  "*The server's reply to QuPath's request for the dashed rectangle of the embedded sample: one "
                  "polygon of class Nucleus per cell, as the extension draws them.*"]
    return "\n".join(lines) + "\n"


def reliability_block(root: Path) -> str:
    """The main job killed at random moments, and the app under concurrent requests (``scripts/benchmark.py
    reliability``)."""
    r = _load(root / "eval" / "reliability" / "reliability.json")
    if r is None:
        return _missing("eval/reliability/reliability.json", "python scripts/benchmark.py reliability")
    k, c = r["kills"], r["concurrent"]
    killed = [x for x in k["kills"] if not x["finished_first"]]
    part_way = sum(1 for x in killed if 0 < x["files"] < 4 * k["n_images"])
    same = "the same files as" if k["differs_from_reference"] == [] else f"files differing ({k['differs_from_reference']}) from"
    memory = (f" The server's peak resident memory was {c['peak_memory_mb_before']:.0f} MB before the burst and "
              f"{c['peak_memory_mb_after']:.0f} MB after it." if c.get("peak_memory_mb_before") else "")
    lines = [
        "| check | runs | failures |", "|---|---|---|",
        f"| main job killed (SIGKILL) at a random moment, then run again with `--resume true` | {len(killed)} kills "
        f"({part_way} with some images written and others not) | {k['partial_files']} files that did not read back |",
        f"| `/infer` requests sent at once to one server | {c['requests']} | {len(c['failures'])} failed, "
        f"{len(c['mismatches'])} answered other than one at a time |",
        "",
        f"After the kills, one more `--resume true` run wrote {same} an uninterrupted run of the {k['n_images']} "
        f"images ({k['reference_seconds']:.1f} s), and left {len(k['hidden_left'])} hidden temporary folders. The "
        f"{c['requests']} concurrent requests took {c['concurrent_seconds']:.1f} s in all, queued for the one "
        f"workflow.{memory}",
        measured_on(r) + " (`eval/reliability/`)"]
    return "\n".join(lines) + "\n"


def mosaic_block(root: Path) -> str:
    """Large images region by region against their tiles one by one (``scripts/benchmark.py mosaic``)."""
    path = root / "eval" / "mosaic" / "mosaic.json"
    if not path.is_file():
        return _missing("eval/mosaic/mosaic.json", "python scripts/benchmark.py mosaic --data-dir DATA")
    r = json.loads(path.read_text())
    base = r["one_by_one"]
    lines = ["| image | cells | against its tiles one by one | away from the tiles' joins | s / megapixel | ratio to the "
             "tiles | peak memory GB |", "|---|---|---|---|---|---|---|",
             f"| its {r['tile_shape'][0]} × {r['tile_shape'][1]} tiles one by one | – | – | – | "
             f"{base['seconds_per_mp']:.2f} | 1.00 | {base['peak_gb']:.2f} |"]
    seams = []
    for row in r["sizes"]:
        lines.append(f"| {row['shape'][0]} × {row['shape'][1]} mosaic, region by region | {row['cells']:,} | "
                     f"{row['count_change_pct']:+.2f} % ({row['tile_cells']:,}) | "
                     f"{row['count_change_inside_pct']:+.2f} % ({row['tile_cells_inside']:,}) | {row['seconds_per_mp']:.2f} | "
                     f"{row['time_ratio']:.2f} | {row['peak_gb']:.2f} |")
        if "whole" in row:
            w = row["whole"]
            lines.append(f"| the same, as one region | {w['cells']:,} | – | – | {w['seconds_per_mp']:.2f} | "
                         f"{w['seconds_per_mp'] / base['seconds_per_mp']:.2f} | {w['peak_gb']:.2f} |")
            seams.append(f"Seams, on the {row['shape'][0]} × {row['shape'][1]} mosaic: of the {w['cells']:,} cells "
                         f"annotated as one region, {100 * w['same_cell_share']:.1f} % come out region by region "
                         f"within IoU .99 of themselves and the least alike at IoU {w['iou_min']:.3f}; "
                         f"{w['unmatched_whole']} cells are unmatched one way and {w['unmatched_regions']} the other.")
    for row in r.get("slides", []):
        lines.append(f"| {row['shape'][0]:,} × {row['shape'][1]:,} slide (a tiled TIFF, read and written region by "
                     f"region) | {row['cells']:,} | {row['count_change_pct']:+.2f} % ({row['tile_cells']:,}) | "
                     f"{row['count_change_inside_pct']:+.2f} % ({row['tile_cells_inside']:,}) | "
                     f"{row['seconds_per_mp']:.2f} | {row['time_ratio']:.2f} | {row['peak_gb']:.2f} |")
    for row in r.get("slides", []):
        seams.append(f"The {row['shape'][0]:,} px slide's seconds are those of annotating its regions, read from the "
                     f"file and with the label map on disk, as the tiles' leave their outputs out; writing its cells "
                     f"as the regions finished added {row['writing_seconds_per_mp']:.2f} s per megapixel, and the "
                     f"whole run, label pyramid included, took {row['total_seconds_per_mp']:.2f}.")
    lines += [""] + seams + [f"Tiles: {len(r['tiles'])} test tiles, cycled. " + measured_on(r) + " (`eval/mosaic/`)"]
    return "\n".join(lines) + "\n"


def qupath_figure(eval_dir: Path, root: Path, path: Path) -> Path | None:
    """The polygons the MONAI Label server returned for QuPath's rectangle on the embedded sample, drawn over it
    (``scripts/benchmark.py serve``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    results = [json.loads(f.read_text()) for f in sorted((eval_dir / "serve").glob("serve_*.json"))]
    results = [r for r in results if "qupath" in r]
    if not results:
        return None
    q = results[0]["qupath"]
    x, y, w, h = q["region"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(np.asarray(Image.open(root / q["image"]).convert("RGB")), extent=None)
    # QuPath's corner grid: pixel (row, col) spans [col, col + 1) x [row, row + 1); imshow centres it at (col, row)
    for polygon in q["polygons"]:
        xy = np.asarray(polygon + polygon[:1]) - 0.5
        ax.plot(xy[:, 0], xy[:, 1], color="#c80000", lw=1.2)
    ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ls="--", lw=1.2, color="white"))
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def effort_block(root: Path) -> str:
    results = effort_results(root / "eval")
    if not results:
        return _missing("eval/effort/annotate_*_f*.json", "bash scripts/run_benchmarks.sh")
    return "\n".join(["![How many cells to annotate](effort.png)", ""] + effort_table(root / "eval")) + "\n"


def tuning_block(root: Path) -> str:
    r = _load(root / "eval" / "baseline_tuning.json")
    if r is None:
        return _missing("eval/baseline_tuning.json", "python scripts/benchmark.py tune-baselines --data-dir DATA")
    log, ws = r["log_train"][0], r["watershed_train"][0]
    verdict = "the module's defaults" if r["log_params_are_defaults"] and r["watershed_params_are_defaults"] else \
        "NOT all the module's defaults: the defaults need updating"
    return (f"The label-free baselines' parameters are the best points of grids on the {len(r['train_tiles'])} train "
            f"tiles (`eval/baseline_tuning.json`), and they are {verdict}: LoG {r['log_params']} (train counting F1 "
            f"{log['f1']:.3f}), Otsu + watershed {r['watershed_params']} (train AJI {ws['aji']:.3f}).\n")


def validation_block(root: Path, name: str = "validation.json") -> str:
    """The student alone and the workflow on train images held out of the self-training (``benchmarks.validation``,
    artifact ``eval/<name>``), the workflow of each ablation folder ``eval/ablation/<ablation>/<name>`` measured on
    the same images, and the ceiling (the student network trained on the true labels)."""
    r = _load(root / "eval" / name)
    if r is None:
        return _missing(f"eval/{name}", f"python scripts/benchmark.py validate --data-dir DATA --json eval/{name}")
    keys = (("f1", "count F1"), ("dice_obj", "object Dice"), ("aji", "AJI"), ("pq", "PQ"), ("f1_pixel", "pixel F1"))
    rows = [("student alone", r["student"]), ("ours", r["ours"])]
    for f in sorted((root / "eval" / "ablation").glob(f"*/{name}")):
        ablation = json.loads(f.read_text())
        if ablation["held_out"] == r["held_out"]:  # scored on other images, it would compare nothing
            rows.append((f"ours, ablation `{f.parent.name}`", ablation["ours"]))
    if "ceiling" in r:  # a diagnostic that breaks the supervision rule on purpose: last, and named so
        rows.append(("ceiling: the student trained on the true labels (not the rule)", r["ceiling"]))
    folds = r.get("folds", [0])
    lines = [f"Held out of self-training: {', '.join(r['held_out'])} (fold{'s' * (len(folds) > 1)} "
             f"{', '.join(map(str, folds))}, each self-trained without its own); self-training seeds "
             f"{', '.join(map(str, r['seeds']))}; mean ± sd over every ({'fold, ' * (len(folds) > 1)}seed, image), "
             f"the bank's cells left out (`eval/{name}`).", "",
             "| workflow | " + " | ".join(name for _, name in keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(pm(row, k) for k, _ in keys) + " |" for name, row in rows]
    return "\n".join(lines + ["", measured_on(r)]) + "\n"


def eval_metrics(eval_dir: Path) -> dict:
    """The bundle metadata's ``eval_metrics``: ours on each organ's test tiles (whole-image benchmark), mean over every
    (seed, tile)."""
    metrics = {}
    for f in sorted(eval_dir.glob("annotate_*.json")):
        r = json.loads(f.read_text())
        organ = tiles_of(r).replace(" + ", "_").lower()
        metrics[f"{organ}_test_counting_f1"] = round(r["counting"]["f1"], 3)
        for key, name in (("dice_obj", "object_dice"), ("aji", "aji"), ("pq", "pq")):
            metrics[f"{organ}_test_{name}"] = round(r["segmentation"][key], 3)
    return metrics


def write_all(root: Path, eval_dir: Path | None = None) -> list[Path]:
    """Regenerate docs/results.md, eval/report.md, the model card's generated blocks and the metadata's
    ``eval_metrics``."""
    eval_dir = eval_dir or root / "eval"
    written = []
    annotate = sorted(eval_dir.glob("annotate_*.json"))
    if annotate:
        (eval_dir / "report.md").write_text(report_text(eval_dir))
        written += [eval_dir / "report.md", figure(annotate, eval_dir / "fig3.png"),
                    figure(annotate, root / "docs" / "fig3.png")]
    if effort_results(eval_dir):
        written.append(effort_figure(eval_dir, root / "docs" / "effort.png"))
    if (drawn := qupath_figure(eval_dir, root, root / "docs" / "serve_qupath.png")) is not None:
        written.append(drawn)
    (root / "docs" / "results.md").write_text(results_text(eval_dir))
    written.append(root / "docs" / "results.md")
    card = root / "docs" / "README.md"
    card.write_text(render_card(card.read_text(), root))
    metadata = root / "configs" / "metadata.json"
    meta = json.loads(metadata.read_text())
    meta["eval_metrics"] = eval_metrics(eval_dir)
    metadata.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    return written + [card, metadata]
