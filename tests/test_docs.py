"""The pages a user reads say what the committed artifacts say: no figure typed by hand, none left stale."""

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from bundle.benchmarks.report import BLOCK, eval_metrics, render_card, report_text, results_text

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "docs" / "README.md"


def test_the_model_card_figures_are_the_ones_its_artifacts_give():
    card = CARD.read_text()
    assert len(BLOCK.findall(card)) >= 5
    assert render_card(card, ROOT) == card, "docs/README.md is stale: run python scripts/make_results.py"


def test_the_results_page_and_report_are_the_ones_their_artifacts_give():
    assert results_text(ROOT / "eval") == (ROOT / "docs" / "results.md").read_text()
    assert report_text(ROOT / "eval") == (ROOT / "eval" / "report.md").read_text()


def test_the_model_card_types_no_figure_by_hand():
    prose = BLOCK.sub("", CARD.read_text())
    prose = re.sub(r"```.*?```|`[^`]*`", "", prose, flags=re.S)  # commands and code name settings, not results
    # a decimal number (0.82, .82, 2.5 s) outside the generated blocks would be a measurement typed by hand
    assert re.findall(r"(?<![\w.])\d*\.\d+(?![\w.])", prose) == []


def test_the_generated_blocks_say_where_an_artifact_is_missing(tmp_path):
    (tmp_path / "models").symlink_to(ROOT / "models")
    (tmp_path / "eval").mkdir()
    card = render_card(CARD.read_text(), tmp_path)
    assert "No artifact `eval/nucleus_sizes.json`" in card and "scripts/benchmark.py sizes" in card


def test_the_metadata_reports_the_measured_eval_metrics():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] and meta["eval_metrics"] == eval_metrics(ROOT / "eval")


def test_the_metadata_lists_every_package_the_bundle_imports():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    listed = set(meta["required_packages_version"]) | {"torch", "numpy", "monai"}  # the schema's own fields
    listed |= set(meta["supported_apps"])  # bundle.serving is a MONAI Label app: it imports MONAI Label
    imported = set()
    for path in (ROOT / "bundle").rglob("*.py"):
        if "benchmarks" in path.parts:  # measured with, not run by, the bundle
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions.get(m, [m])[0].lower() for m in imported if m not in sys.stdlib_module_names and m != "bundle"}
    needed = {"itk" if name.startswith("itk") else name for name in needed}  # itk's wheels are split in parts
    assert needed <= {name.lower() for name in listed}, needed - listed


def test_the_bundle_versions_agree():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    pyproject = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert meta["version"] == pyproject == next(iter(meta["changelog"]))
