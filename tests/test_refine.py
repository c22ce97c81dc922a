"""Shapes that follow the image: the refined mask fits its evidence and stays a deformed prior shape."""

import numpy as np
import torch
from scipy import ndimage
from skimage.draw import disk, ellipse

from bundle.fields import jacobian_determinant
from bundle.refine import cell_evidence, dice, follow_image
from bundle.register import warp_labels


def mask_of(rr_cc, size=64):
    m = torch.zeros(1, 1, size, size)
    m[0, 0][rr_cc] = 1
    return m


def test_a_mask_is_pulled_onto_its_evidence_without_folding():
    prior = mask_of(disk((32, 32), 9))
    evidence = mask_of(ellipse(34, 30, 12, 7, rotation=0.4))
    field = follow_image(prior, evidence)
    refined = warp_labels(prior, field, "mask")
    assert dice(refined, evidence) > dice(prior, evidence) + 0.1
    assert dice(refined, evidence) > 0.85
    assert (jacobian_determinant(field) > 0).all()


def test_the_refined_shape_stays_one_component_even_when_the_evidence_is_two():
    prior = mask_of(disk((32, 32), 10))
    evidence = mask_of(disk((32, 22), 6)) + mask_of(disk((32, 42), 6))
    refined = warp_labels(prior, follow_image(prior, evidence), "mask")
    assert ndimage.label(refined[0, 0].numpy())[1] == 1


def test_without_evidence_the_shape_is_left_as_it_is():
    prior = mask_of(disk((32, 32), 9))
    field = follow_image(prior, torch.zeros_like(prior))
    assert field.abs().max() < 0.5
    assert torch.equal(warp_labels(prior, field, "mask"), prior)


def test_a_cells_evidence_leaves_out_its_neighbours():
    instances = np.zeros((100, 100), np.int32)
    instances[40:60, 40:60] = 1
    instances[40:60, 60:75] = 2
    foreground = (instances > 0).astype(np.float32)
    evidence = cell_evidence(foreground, instances, np.array([[50.0, 50.0]]), 64)
    assert evidence.shape == (1, 1, 64, 64)
    assert evidence.sum() == 400  # its own 20 x 20 pixels; the neighbour's are gone


def test_no_cells_no_fields():
    assert follow_image(torch.zeros(0, 1, 64, 64), torch.zeros(0, 1, 64, 64)).shape == (0, 2, 64, 64)


def test_cells_are_fitted_alone_so_chunking_the_batch_changes_nothing(monkeypatch):
    import bundle.refine as refine

    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(10, 1, 64, 64, generator=generator) > 0.5).float()
    evidence = torch.rand(10, 1, 64, 64, generator=generator)
    together = follow_image(masks, evidence)
    monkeypatch.setattr(refine, "CHUNK", 3)
    assert torch.allclose(follow_image(masks, evidence), together, atol=1e-5)
