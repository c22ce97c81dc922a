"""Shared fixtures: small synthetic dataset folders, so no test needs ../shared."""

import numpy as np
import pytest
from PIL import Image
from skimage.draw import ellipse


def synthetic_tile(seed: int, shape=(160, 200), n_cells=14):
    """An H&E-like tile: pink background, dark purple elliptical nuclei; returns (rgb uint8 (H, W, 3), labels int32)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = np.empty((h, w, 3), np.float32)
    image[:] = (0.92, 0.72, 0.85)
    image += rng.normal(0, 0.02, image.shape)
    labels = np.zeros(shape, np.int32)
    placed = 0
    for _ in range(200):
        if placed == n_cells:
            break
        r, c = rng.uniform(12, h - 12), rng.uniform(12, w - 12)
        a, b = rng.uniform(6, 11), rng.uniform(4, 7)
        rr, cc = ellipse(r, c, a, b, shape=shape, rotation=rng.uniform(-np.pi, np.pi))
        if labels[rr, cc].any() or len(rr) < 20:
            continue
        placed += 1
        labels[rr, cc] = placed
        image[rr, cc] = (0.35, 0.2, 0.55) + rng.normal(0, 0.03, (len(rr), 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), labels


def write_dataset(root, image_ids_splits, shape=(160, 200)):
    """A dataset folder in the agreed layout with label PNGs and organs.csv."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["image_id,organ,official_split"]
    for i, (image_id, organ, split) in enumerate(image_ids_splits):
        rgb, labels = synthetic_tile(i, shape)
        Image.fromarray(rgb).save(root / "images" / f"{image_id}.png")
        Image.fromarray(labels.astype(np.uint16)).save(root / "labels" / f"{image_id}.png")
        rows.append(f"{image_id},{organ},{split}")
    (root / "organs.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Four synthetic tiles: two train and one test of 'Kidney', one train of 'Lung'."""
    return write_dataset(
        tmp_path_factory.mktemp("tiny") / "dataset",
        [("k1", "Kidney", "train"), ("k2", "Kidney", "train"), ("k3", "Kidney", "test"), ("l1", "Lung", "train")],
    )
