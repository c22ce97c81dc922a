"""The whole-image benchmark (`scripts/benchmark.py annotate`): one command, every method scored the same way, the
JSON layout reviewers read, and the pages generated from it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEGMENTATION = {"dice_obj", "iou_obj", "aji", "pq", "f1_pixel"}
COUNTING = {"precision", "recall", "f1"}
pytestmark = pytest.mark.slow  # one benchmark run (two seeds, every baseline) serves the whole module


def annotate(dataset, out: Path, name: str, *options) -> dict:
    """``scripts/benchmark.py annotate`` on the tiny dataset (half of its train cells as the bank); its JSON."""
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "annotate", "--train-dir", str(dataset),
               "--test-dir", str(dataset), "--fraction", "0.5", "--work-dir", str(out / "work"), "--device", "cpu",
               "--json", str(out / name), *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def annotate_result(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    return out, annotate(tiny_dataset, out, "annotate_kidney.json", "--organ", "Kidney", "--seeds", "0,1",
                         "--unet-iterations", "10")


def _in_unit_interval(block: dict, keys) -> bool:
    return all(0.0 <= block[k] <= 1.0 for k in keys)


def test_json_has_the_issue_layout_for_ours_and_every_baseline(annotate_result):
    _, r = annotate_result
    assert r["organ"] == "Kidney" and r["seeds"] == [0, 1] and r["n_tiles"] == 1
    assert set(r["baselines"]) == {"ours_gt_centroids", "student", "ours_no_refine", "ours_no_student", "blob_log",
                                   "otsu_watershed", "unet"}
    for block in [r] + [r["baselines"][m] for m in ("ours_gt_centroids", "student", "ours_no_refine",
                                                     "ours_no_student", "otsu_watershed", "unet")]:
        assert COUNTING <= set(block["counting"]) and COUNTING <= set(block["counting_paper_rule"])
        assert SEGMENTATION <= set(block["segmentation"]) and SEGMENTATION <= set(block["segmentation_cc"])
        assert _in_unit_interval(block["counting"], COUNTING) and _in_unit_interval(block["segmentation"], SEGMENTATION)
        assert block["seconds_per_tile"] > 0
    assert "dtheta_deg" in r["orientation"] and "dtheta_deg" in r["baselines"]["ours_gt_centroids"]["orientation"]
    # a point detector is scored on counting only
    assert "segmentation" not in r["baselines"]["blob_log"] and "f1" in r["baselines"]["blob_log"]["counting"]
    assert set(r["stage_seconds"]) == {"detect", "match", "register_warp", "refine", "stitch"}
    assert r["archetypes"]["distinct"] >= 1 and 0 < r["archetypes"]["busiest_share"] <= 1


def test_ground_truth_centroids_find_the_annotated_nuclei(annotate_result):
    _, r = annotate_result
    # started from every annotated centroid, the workflow places a cell on (nearly) every nucleus
    assert r["baselines"]["ours_gt_centroids"]["counting"]["recall"] >= 0.9


def test_every_seed_draws_its_own_bank_and_is_kept_per_tile(annotate_result):
    _, r = annotate_result
    assert [run["seed"] for run in r["runs"]] == [0, 1]
    assert all(len(run["tiles"]) == 1 and run["tiles"][0]["image_id"] == "k3" for run in r["runs"])


def test_report_and_figure_are_generated_from_the_json(annotate_result):
    out, r = annotate_result
    from bundle.benchmarks.report import figure, report_text, results_text

    report = report_text(out)
    figure(sorted(out.glob("annotate_*.json")), out / "fig3.png")
    assert "ours_gt_centroids" in report and "otsu_watershed" in report and "(fig3.png)" in report
    assert f"{r['segmentation']['aji']:.3f}" in report  # the figure in the table is the one in the JSON
    assert (out / "fig3.png").stat().st_size > 1000
    page = results_text(out)
    assert f"{r['counting']['f1']:.3f}" in page and f"{r['machine']['cores']} × " in page  # the machine that measured it


def test_the_result_records_the_machine_it_was_measured_on(annotate_result):
    _, r = annotate_result
    assert r["machine"]["cores"] >= 1 and r["machine"]["torch"] == __import__("torch").__version__


def test_a_subset_of_methods_and_organs_no_bank_cell_came_from(tiny_dataset, tmp_path):
    # no --organ: the bank comes from every train organ; --test-organs names the organs scored
    r = annotate(tiny_dataset, tmp_path, "annotate_unseen.json", "--test-organs", "Kidney", "--seed", "0",
                 "--methods", "ours,otsu_watershed")
    assert set(r["baselines"]) == {"otsu_watershed"} and r["organ"] == "all" and r["test_organs"] == ["Kidney"]
