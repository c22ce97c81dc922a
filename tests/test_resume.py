"""A killed run leaves only whole files, and the same command with ``--resume true`` finishes the job as one
uninterrupted run would have."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from bundle.data import remove_dead_temporaries
from bundle.outputs import output_names, write_outputs
from bundle.stitch import Annotation, cell_table
from bundle.workflow import outputs_complete, still_to_annotate


def annotation_of(labels: np.ndarray) -> Annotation:
    n = int(labels.max())
    cells = cell_table(labels, np.arange(n), {"ramp": torch.zeros(n, 1, 8, 8), "mask": torch.ones(n, 1, 8, 8),
                                              "folded_pct": torch.zeros(n), "uncertainty": torch.zeros(n)},
                       torch.zeros(n, dtype=torch.long), torch.zeros(n))
    return Annotation(labels, cells)


def test_resume_skips_exactly_the_images_whose_outputs_are_all_there_and_agree(tmp_path):
    labels = np.zeros((40, 50), np.int32)
    labels[5:15, 5:15], labels[20:30, 30:45] = 1, 2
    images = [{"image": str(tmp_path / f"{name}.png")} for name in ("whole", "no_csv", "cut_geojson", "never")]
    for name in ("whole", "no_csv", "cut_geojson"):
        write_outputs(annotation_of(labels), torch.rand(3, 40, 50), tmp_path / "out", name)
    (tmp_path / "out" / output_names("no_csv")["csv"]).unlink()
    geojson = tmp_path / "out" / output_names("cut_geojson")["geojson"]
    geojson.write_bytes(geojson.read_bytes()[:-40])

    assert [outputs_complete(tmp_path / "out", i["image"]) for i in images] == [True, False, False, False]
    assert still_to_annotate(images, tmp_path / "out", resume=True) == images[1:]
    assert still_to_annotate(images, tmp_path / "out", resume=False) == images


def test_what_a_killed_writer_left_is_removed_and_a_live_writers_folder_and_other_hidden_folders_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    killed = tmp_path / f".a_labels.tif.{int(dead.stdout)}@{host}.k1ll3d_x"
    live = tmp_path / f".b_labels.tif.{os.getpid()}@{host}.l1ve_abc"
    elsewhere = tmp_path / f".c_labels.tif.{int(dead.stdout)}@another-machine.0ther_ab"
    users = tmp_path / ".git"
    for folder in (killed, live, elsewhere, users):
        folder.mkdir()
        (folder / "0_a_labels.tif").write_bytes(b"half")
    assert remove_dead_temporaries(tmp_path) == 1
    assert not killed.exists() and live.exists() and elsewhere.exists() and users.exists()


@pytest.mark.slow
def test_a_run_killed_at_random_moments_leaves_only_whole_files_and_resume_finishes_it_as_one_run_would(tmp_path):
    from bundle.benchmarks.reliability import kills

    # each kill falls as a random number of new output files has appeared: some images done, others not
    result = kills(n_kills=4, n_images=4, seed=0, work=tmp_path, on_files=True)
    assert not any(k["finished_first"] for k in result["kills"])
    assert any(0 < k["files"] < 4 * 4 for k in result["kills"]), "no kill left the folder part-way"
    assert result["partial_files"] == 0, [k["unreadable"] for k in result["kills"]]
    assert result["final_returncode"] == 0, result["final_stderr"]
    assert result["differs_from_reference"] == []
    assert result["hidden_left"] == []


def test_resume_skips_a_slide_whose_three_outputs_are_all_there(tmp_path):
    import json

    import tifffile

    from bundle.slide import slide_output_names

    slide = tmp_path / "big.tif"  # above data.SLIDE_PIXELS: a slide; zeros compress to almost nothing
    tifffile.imwrite(slide, np.zeros((4200, 4200, 3), np.uint8), photometric="rgb", tile=(512, 512),
                     compression="zlib")
    out = tmp_path / "out"
    out.mkdir()
    names = slide_output_names("big")
    assert not outputs_complete(out, slide)
    tifffile.imwrite(out / names["labels"], np.zeros((8, 8), np.uint16))
    (out / names["geojson"]).write_text(json.dumps({"type": "FeatureCollection", "features": [{}]}))
    (out / names["csv"]).write_text("id,area\n1,30\n2,0\n")  # cell 2 lost its pixels to an earlier region
    assert outputs_complete(out, slide)
    assert still_to_annotate([str(slide)], out, resume=True) == []
