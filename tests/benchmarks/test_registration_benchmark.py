"""The registration benchmark (`scripts/benchmark.py registration`) on organs the networks never saw: the shipped
networks, archetypes matched to the test cells of the named organs, every row scored on the same pairs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_registration_scores_the_named_organs_with_the_given_networks_and_names_them_in_the_report(tiny_dataset,
                                                                                                    tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "registration", "--train-dir", str(tiny_dataset),
               "--test-dir", str(tiny_dataset), "--test-organs", "Kidney", "--fraction", "0.5", "--seed", "0",
               "--checkpoint", str(ROOT / "models" / "invariant.pt"),
               "--mapping-checkpoint", str(ROOT / "models" / "model.pt"), "--max-pairs", "6", "--synthetic-pairs", "4",
               "--work-dir", str(tmp_path / "work"), "--device", "cpu",
               "--json", str(tmp_path / "registration_unseen.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "registration_unseen.json").read_text())
    assert r["organ"] == "all" and r["test_organs"] == ["Kidney"] and r["pairs"] == 6
    assert {"identity", "dihedral", "demons", "ours"} <= set(r["rows"])
    assert all(0 <= row["dice"] <= 1 for row in r["rows"].values())
    assert r["mapping_train_seconds"] == 0  # the given networks, not trained ones

    from bundle.benchmarks.report import headline_block, results_text

    (tmp_path / "eval").mkdir()
    (tmp_path / "registration_unseen.json").rename(tmp_path / "eval" / "registration_unseen.json")
    line = next(l for l in headline_block(tmp_path).splitlines() if l.startswith("- Registration"))
    assert line.startswith("- Registration, Kidney (6 test cells per seed") and "organs no network saw" in line
    assert f"Dice {r['rows']['ours']['dice']:.3f}" in line and "`eval/registration_unseen.json`" in line
    assert "### Kidney: 6 test cells per seed" in results_text(tmp_path / "eval")
