"""The archetype bank: drawn from train cells only, seeded, stored as plain tensors."""

import numpy as np
import pytest
import torch

from bundle.bank import BANK_KEYS, BankDataset, build_bank, load_bank, save_bank, select_cells
from bundle.data import DataError, list_dataset, load_sample
from bundle.patches import principal_angle


def test_bank_is_a_seeded_fraction_of_the_train_cells_only(tiny_dataset):
    bank = build_bank(tiny_dataset, fraction=0.5, seed=3, progress=False)
    train = [s for s in list_dataset(tiny_dataset, split="train")]
    n_train_cells = sum(int(load_sample(s)[1].max()) for s in train)
    assert bank["meta"]["n_candidates"] == n_train_cells
    assert len(bank["images"]) == round(0.5 * n_train_cells)
    assert set(bank["image_ids"]) <= {"k1", "k2", "l1"}  # never the test image k3
    again = build_bank(tiny_dataset, fraction=0.5, seed=3, progress=False)
    other = build_bank(tiny_dataset, fraction=0.5, seed=4, progress=False)
    assert torch.equal(bank["cell_ids"], again["cell_ids"]) and bank["image_ids"] == again["image_ids"]
    assert not (torch.equal(bank["cell_ids"], other["cell_ids"]) and bank["image_ids"] == other["image_ids"])


def test_bank_entries_are_cell_centred_crops_of_their_source_cell(tiny_dataset):
    bank = build_bank(tiny_dataset, fraction=1.0, seed=0, organ="kidney", progress=False)
    assert set(bank["organs"]) == {"Kidney"}
    assert bank["images"].dtype == torch.uint8 and bank["images"].shape[1:] == (3, 96, 96)
    assert bank["masks"].shape[1:] == (1, 96, 96)
    sample = {s.image_id: s for s in list_dataset(tiny_dataset)}[bank["image_ids"][0]]
    _, labels = load_sample(sample)
    cell = labels == int(bank["cell_ids"][0])
    assert int(bank["masks"][0].sum()) == int(cell.sum())  # the whole nucleus, and only it
    rows, cols = np.nonzero(bank["masks"][0, 0].numpy())
    assert abs(rows.mean() - 47.5) < 1.0 and abs(cols.mean() - 47.5) < 1.0
    assert torch.allclose(bank["orientation"], principal_angle(bank["masks"].float()))


def test_per_organ_draws_the_fraction_in_every_organ():
    organs = ["A"] * 90 + ["B"] * 10
    chosen = select_cells(organs, 0.1, seed=0, per_group=True)
    assert sum(organs[i] == "A" for i in chosen) == 9 and sum(organs[i] == "B" for i in chosen) == 1


def test_fraction_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="fraction"):
        select_cells(["A"] * 5, 0.0, seed=0, per_group=False)


def test_bank_round_trips_through_a_weights_only_file(tiny_dataset, tmp_path):
    bank = build_bank(tiny_dataset, fraction=0.3, seed=0, progress=False)
    path = save_bank(bank, tmp_path / "bank.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(BANK_KEYS)
    loaded = load_bank(path)
    assert torch.equal(loaded["images"], bank["images"]) and loaded["image_ids"] == bank["image_ids"]
    item = BankDataset(loaded)[0]
    assert item["image"].dtype == torch.float32 and float(item["image"].max()) <= 1.0


def test_empty_missing_or_foreign_bank_files_are_refused_by_name(tiny_dataset, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_bank(tmp_path / "nope.pt")
    torch.save({"model": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(DataError, match="weights.pt.*missing keys"):
        load_bank(tmp_path / "weights.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="cut.pt"):
        load_bank(tmp_path / "cut.pt")
    bank = build_bank(tiny_dataset, fraction=0.3, seed=0, progress=False)
    empty = {k: (v[:0] if torch.is_tensor(v) else ([] if isinstance(v, list) else v)) for k, v in bank.items()}
    save_bank(empty, tmp_path / "empty.pt")
    with pytest.raises(DataError, match="empty"):
        load_bank(tmp_path / "empty.pt")


def test_a_bank_can_be_built_from_qupath_geojson_annotations(tmp_path):
    import json

    from PIL import Image

    from conftest import synthetic_tile

    rgb, labels = synthetic_tile(7)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "slide.png")
    features = []
    for i in range(1, labels.max() + 1):
        rows, cols = np.nonzero(labels == i)
        box = [[int(cols.min()), int(rows.min())], [int(cols.max()), int(rows.min())], [int(cols.max()), int(rows.max())],
               [int(cols.min()), int(rows.max())], [int(cols.min()), int(rows.min())]]  # [x, y] as QuPath writes
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [box]},
                         "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}})
    (tmp_path / "annotations" / "slide.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    bank = build_bank(tmp_path, fraction=1.0, seed=0, progress=False)
    assert len(bank["images"]) == labels.max()  # no organs.csv: the one image counts as train
    assert all(int(m.sum()) > 0 for m in bank["masks"])


def test_fragments_and_crescents_never_serve_as_archetypes():
    from skimage.draw import disk

    from bundle.bank import whole_archetypes

    masks = torch.zeros(3, 1, 96, 96, dtype=torch.uint8)
    masks[0, 0][disk((48, 48), 12)] = 1  # a whole nucleus
    masks[1, 0][disk((48, 48), 12)] = 1
    masks[1, 0][disk((48, 54), 11)] = 0  # a crescent: most of its convex hull is empty
    masks[2, 0][disk((30, 30), 6)] = 1
    masks[2, 0][disk((66, 66), 6)] = 1  # two pieces
    assert whole_archetypes({"masks": masks}).tolist() == [True, False, False]


def test_the_workflow_matches_only_whole_archetypes_but_reports_bank_ids(tiny_dataset):
    import copy

    from bundle.inferer import ArchetypeInferer
    from bundle.networks import DiffeoInvariantNet

    bank = build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False)
    broken = copy.deepcopy(bank)
    broken["masks"][0] = 0
    broken["masks"][0, 0, 10:12, 10:12] = 1
    broken["masks"][0, 0, 80:82, 80:82] = 1  # cell 0 becomes two specks
    inferer = ArchetypeInferer(broken, DiffeoInvariantNet(in_channels=3, embedding_dim=16))
    inferer.setup()
    assert 0 not in inferer.archetype_ids.tolist() and len(inferer.archetype_ids) == len(bank["masks"]) - 1
