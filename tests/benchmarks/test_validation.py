"""The validation protocol (`scripts/benchmark.py validate`): a self-training recipe is scored on train images that
were held out of the self-training, without the bank's cells, and never on test tiles."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bundle.benchmarks import validation

ROOT = Path(__file__).resolve().parents[2]


def test_fold_k_holds_out_the_kth_train_image_of_every_organ_with_two_or_more():
    samples = [SimpleNamespace(image_id=i, organ=o) for i, o in
               [("k2", "Kidney"), ("k1", "Kidney"), ("l1", "Lung"), ("b3", "Breast"), ("b1", "Breast"), ("b2", "Breast")]]
    assert validation.hold_out(samples) == ["b1", "k1"]  # Lung has one train image: the student needs it
    assert validation.hold_out(samples, fold=1) == ["b2", "k2"]
    assert validation.hold_out(samples, fold=2) == ["b3"]
    assert validation.hold_out(samples, fold=3) == []


def test_the_banks_cells_and_instances_lying_on_them_are_left_out_of_the_score():
    truth = np.zeros((60, 60), np.int32)
    truth[5:15, 5:15], truth[30:40, 30:40] = 1, 2
    in_bank = truth == 1
    predicted = truth.copy()
    predicted[5:15, 5:15] = 0
    predicted[4:16, 4:16] = 7  # a wrong outline, but on the bank's cell: not scored
    scores = validation.score_without(predicted, truth, in_bank)
    assert scores["f1"] == 1 and scores["dice_obj"] == 1 and scores["aji"] == 1
    missed = np.where(truth == 2, 0, predicted)  # the one scored nucleus missed: nothing is found
    assert validation.score_without(missed, truth, in_bank)["f1"] == 0


def test_a_student_self_trained_without_the_held_out_images_is_scored_on_them(tiny_dataset, tmp_path):
    stale = tmp_path / "work" / "validation" / "fold0" / "seed0" / "student.pt"  # a student that held out another image
    stale.parent.mkdir(parents=True)
    torch.save({"model": {}, "held_out": ["l1"]}, stale)
    result = validation.run(tiny_dataset, seeds=[0], folds=[0, 1], work_dir=tmp_path / "work", iterations=3)
    assert result["held_out"] == ["k1", "k2"]
    assert [(r["fold"], r["seed"], r["image_id"]) for r in result["runs"]] == [(0, 0, "k1"), (1, 0, "k2")]
    for method in ("student", "ours", "ceiling"):
        assert all(0 <= result[method][k] <= 1 for k in validation.KEYS)
    checkpoint = torch.load(tmp_path / "work" / "validation" / "fold0" / "seed0" / "student.pt", weights_only=True)
    assert checkpoint["held_out"] == ["k1"] and checkpoint["iterations"] == 3  # trained again, not the stale one
    # the ceiling learnt the truth of every train image but the held-out one, for all self-training rounds' steps
    ceiling = torch.load(tmp_path / "work" / "validation" / "fold0" / "seed0" / "ceiling.pt", weights_only=True)
    assert sorted(ceiling["images"]) == ["k2", "l1"] and ceiling["iterations"] == 3 * validation.selftrain.ROUNDS
    fold1 = torch.load(tmp_path / "work" / "validation" / "fold1" / "seed0" / "student.pt", weights_only=True)
    assert fold1["held_out"] == ["k2"]  # each fold self-trained without its own held-out image

    # the command line reuses the cached student (no second self-training) and writes the same scores
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "validate", "--data-dir", str(tiny_dataset),
               "--seeds", "0", "--folds", "0,1", "--work-dir", str(tmp_path / "work"), "--device", "cpu",
               "--json", str(tmp_path / "validation.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((tmp_path / "validation.json").read_text())
    assert written["ours"] == result["ours"] and written["student"] == result["student"]
    assert "held out of self-training: k1, k2; folds [0, 1]" in done.stdout

    from bundle.benchmarks.report import validation_block

    (tmp_path / "eval").mkdir()
    (tmp_path / "validation.json").rename(tmp_path / "eval" / "validation.json")
    block = validation_block(tmp_path)
    assert block.startswith("Held out of self-training: k1, k2 (folds 0, 1, each self-trained without its own)")
    assert f"| ours | {written['ours']['f1']:.3f} ± " in block
    assert f"(not the rule) | {written['ceiling']['f1']:.3f} ± " in block.splitlines()[-3]  # the last row


def test_a_cached_validation_network_is_reused_only_when_made_by_the_same_recipe(tmp_path):
    from bundle.student import FEATURES

    path = tmp_path / "student.pt"
    recipe = {"held_out": ["k1"], "iterations": 1500, "features": list(FEATURES), "slope": 80.0}
    torch.save({"model": {}, **recipe}, path)
    assert validation._cached(path, recipe)
    assert not validation._cached(path, {**recipe, "held_out": ["l1"]})  # it learnt from the image now held out
    assert not validation._cached(path, {**recipe, "features": [8, 8, 16, 32, 64, 8]})  # its weights would not load
    assert not validation._cached(path, {**recipe, "slope": 0.0})  # another loss: a lever must not reuse it
    assert validation._cached(path, {**recipe, "iterations": 3})  # steps are not compared (the module says why)
    torch.save({"model": {}, **{k: v for k, v in recipe.items() if k != "slope"}}, path)
    assert not validation._cached(path, recipe)  # made before the recipe recorded the slope
    assert not validation._cached(tmp_path / "missing.pt", recipe)


def test_an_ablation_row_appears_only_beside_a_validation_of_the_same_images(tmp_path):
    from bundle.benchmarks.protocol import machine
    from bundle.benchmarks.report import validation_block

    scores = {k: v for key in validation.KEYS for k, v in ((key, 0.5), (key + "_sd", 0.01))}
    result = {"held_out": ["k1", "k2"], "folds": [0, 1], "seeds": [0], "machine": machine(),
              **{m: scores for m in validation.METHODS}}
    (tmp_path / "eval" / "ablation" / "lever").mkdir(parents=True)
    (tmp_path / "eval" / "validation_folds.json").write_text(json.dumps(result))
    ablation = tmp_path / "eval" / "ablation" / "lever" / "validation_folds.json"
    ablation.write_text(json.dumps({**result, "held_out": ["k1"]}))
    assert "ablation `lever`" not in validation_block(tmp_path, "validation_folds.json")
    ablation.write_text(json.dumps(result))
    assert "| ours, ablation `lever` | 0.500 ± 0.010 |" in validation_block(tmp_path, "validation_folds.json")
