"""student: the dense nucleus network that self-training distils from DiffKillR's own annotations.

DiffKillR annotates cell by cell; it has no dense view of the image. The student is a small MONAI ``BasicUNet`` that
reads the whole image once and predicts, per pixel,

* channel 0, **foreground**: the logit of "this pixel is nucleus";
* channel 1, **centre-ness**: the logit of the pixel's distance to its nucleus' boundary, divided by the largest such
  distance in that nucleus (1 at the centre, near 0 at the edge). Touching nuclei meet in a valley of centre-ness,
  which is what separates them (the role HoVer-Net's horizontal / vertical maps play). As HoVer-Net does for its
  maps, the loss matches the map's slopes as well as its values (``slope_mismatch``), which keeps the valley deep.

Its instances (``student_instances``) are the bundle's detector, and its foreground is the image evidence the
archetype shapes are refined against (``bundle.refine``). It learns from ``bundle.selftrain``'s label maps: the
bank's true cells plus DiffKillR's confident pseudo-labels, with every uncertain pixel left out of the loss.

Shapes: images (B, 3, H, W) in [0, 1]; targets (B, 3, H, W): foreground {0, 1}, centre-ness in [0, 1], pixel weight.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import find_boundaries, relabel_sequential, watershed
from tqdm.auto import tqdm

from .fields import dihedral

__all__ = ["build_student", "centre_ness", "slope_mismatch", "train_student", "student_maps", "student_instances"]

FEATURES = (16, 16, 32, 64, 128, 16)
# a nucleus piece smaller than this (px) is noise, not a nucleus (about a fifth of the smallest MoNuSeg nuclei)
MIN_PIECE = 30
# the student's markers: maxima of centre-ness that rise at least this much above the valley to their neighbour (an
# h-maximum). Tuned on the 13 train tiles (0.1 to 0.4; peaks a fixed distance apart, 5 to 13 px, split nuclei more):
# centre-ness is 1 at every nucleus' centre, so a real neighbour stands out by the depth of the valley between them.
MARKER_HEIGHT = 0.3
# an instance whose centre-ness never reaches this has no centre the student believes in: clutter or a fragment, not
# a nucleus. Tuned on the 13 train tiles (0.4 to 0.7): it drops false detections, and counting F1 and PQ rose by about
# a hundredth while object Dice and AJI stayed put.
MIN_CENTRE = 0.6
# weight of the centre-ness slope mismatch in the loss (HoVer-Net's gradient loss, on centre-ness). Cross-entropy
# alone lets the student blur the valley between touching nuclei, and the split then merges them: trained on the true
# labels, the student still merged 86 groups of touching nuclei on the held-out images. Matching the slopes (about
# 1 / radius per px, reversing at the valley) deepens the valley. On that ceiling (seed 0) 80 was best of 20, 80, 300.
SLOPE = 80.0


def build_student() -> torch.nn.Module:
    """The student (B, 3, H, W) -> (B, 2, H, W) logits: foreground, centre-ness. H, W multiples of 16.

    Its weights are kept channels-last: the same arithmetic, and on CPU the whole-image pass takes about half the time
    (oneDNN's convolutions prefer that layout: a third less time on a 1000 x 1000 tile, 2 CPU cores)."""
    network = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=FEATURES, norm="batch")
    return network.to(memory_format=torch.channels_last)


def centre_ness(instances: np.ndarray) -> np.ndarray:
    """Per pixel of an instance map (H, W), its distance to the instance's boundary over the instance's largest
    distance: (H, W) float32 in [0, 1], 0 on background. Boundaries between touching instances count as edges."""
    inside = (instances > 0) & ~find_boundaries(instances, mode="inner")
    distance = ndimage.distance_transform_edt(inside)
    peak = ndimage.maximum(distance, instances, index=np.arange(instances.max() + 1))
    peak = np.asarray(peak, np.float64)
    peak[0] = 1.0
    return (distance / np.maximum(peak[instances], 1.0)).astype(np.float32)


def _augment(batch: torch.Tensor, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """A random flip / quarter turn per item (all channels alike) and a colour jitter of the image channels."""
    k = torch.randint(0, 8, (len(batch),), generator=generator)
    batch = dihedral(batch, k)
    if jitter:
        scale = 1 + jitter * (2 * torch.rand(len(batch), 3, 1, 1, generator=generator) - 1)
        shift = jitter * (2 * torch.rand(len(batch), 1, 1, 1, generator=generator) - 1)
        batch = torch.cat([(batch[:, :3] * scale + shift).clamp(0, 1), batch[:, 3:]], 1)
    return batch


def slope_mismatch(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the slopes (differences of neighbouring pixels, along rows and along columns)
    of ``predicted`` and ``target`` (B, 1, H, W), over the pairs of neighbours that both have ``weight``."""
    total, pairs = predicted.new_zeros(()), predicted.new_zeros(())
    for dim in (2, 3):
        n = predicted.shape[dim] - 1
        slope = lambda x: x.narrow(dim, 1, n) - x.narrow(dim, 0, n)  # noqa: E731
        both = weight.narrow(dim, 1, n) * weight.narrow(dim, 0, n)
        total = total + (both * (slope(predicted) - slope(target)) ** 2).sum()
        pairs = pairs + both.sum()
    return total / pairs.clamp_min(1)


def student_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Weighted foreground cross-entropy, plus centre-ness cross-entropy and ``SLOPE`` x the centre-ness slope
    mismatch (``slope_mismatch``) on the labelled nucleus pixels.

    logits (B, 2, H, W); targets (B, 3, H, W): foreground, centre-ness, weight (0 = not labelled: uncertain pixels
    teach nothing, neither nucleus nor background)."""
    fg, centre, weight = targets[:, 0:1], targets[:, 1:2], targets[:, 2:3]
    fg_loss = F.binary_cross_entropy_with_logits(logits[:, 0:1], fg, reduction="none")
    centre_weight = weight * fg
    centre_loss = F.binary_cross_entropy_with_logits(logits[:, 1:2], centre, reduction="none")
    return ((fg_loss * weight).sum() / weight.sum().clamp_min(1)
            + (centre_loss * centre_weight).sum() / centre_weight.sum().clamp_min(1)
            + SLOPE * slope_mismatch(torch.sigmoid(logits[:, 1:2]), centre, centre_weight))


def train_student(images: list[torch.Tensor], targets: list[torch.Tensor], iterations: int = 1500,
                  batch_size: int = 8, crop: int = 128, lr: float = 2e-3, jitter: float = 0.1, seed: int = 0,
                  device="cpu", network: torch.nn.Module | None = None, progress: bool = True) -> torch.nn.Module:
    """Train the student on whole images (3, H, W) in [0, 1] and their targets (3, H, W) (see ``student_loss``).

    Each step draws ``batch_size`` random ``crop`` px windows (a window less than a tenth labelled is drawn again), seeded
    by ``seed``; Adam with a cosine-decayed rate. ``network``: continue from it (a later self-training round);
    None: a fresh ``build_student``. Returns the network in eval mode, ``network.info`` recording the run.
    """
    if not images or len(images) != len(targets):
        raise ValueError(f"need one target per image, got {len(images)} images and {len(targets)} targets")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    if network is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_student()
    network = network.to(device).train()
    stacks = [torch.cat([image.float(), target.float()], 0) for image, target in zip(images, targets)]
    if any(min(stack.shape[1:]) < crop for stack in stacks):
        raise ValueError(f"every training image must be at least {crop} x {crop} px")
    if not any(stack[5].any() for stack in stacks):
        raise ValueError("the targets label no pixel at all: nothing to learn from")
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(iterations, 1))
    bar = tqdm(range(iterations), desc="training the student", unit="it", disable=not progress)
    for _ in bar:
        windows, draws = [], 0
        while len(windows) < batch_size:
            stack = stacks[int(torch.randint(len(stacks), (1,), generator=generator))]
            top = int(torch.randint(stack.shape[1] - crop + 1, (1,), generator=generator))
            left = int(torch.randint(stack.shape[2] - crop + 1, (1,), generator=generator))
            window = stack[:, top : top + crop, left : left + crop]
            draws += 1
            # a window that is mostly unlabelled teaches little: draw again (within reason)
            if window[5].sum() > 0.1 * crop * crop or draws > 20 * batch_size:
                windows.append(window)
        batch = _augment(torch.stack(windows), generator, jitter).to(device)
        loss = student_loss(network(batch[:, :3]), batch[:, 3:])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    network.eval()
    network.info = {"iterations": int(iterations), "batch_size": batch_size, "crop": crop, "seed": int(seed),
                    "images": len(images), "train_seconds": time.perf_counter() - start}
    return network


@torch.no_grad()
def student_maps(network: torch.nn.Module, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and centre-ness (H, W) float32 of an image (3, H, W) in [0, 1], in one pass over the
    image reflect-padded to a multiple of 16 (batch norm in eval mode: any size gives the same per-pixel answer as
    the training windows)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"the student reads RGB images (3, H, W), got {tuple(image.shape)}")
    device = next(network.parameters()).device
    h, w = image.shape[1:]
    x = image.float().to(device)[None]
    pad_h, pad_w = -h % 16, -w % 16
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if h > pad_h and w > pad_w else "replicate")
    was_training = network.training
    network.eval()
    try:
        out = torch.sigmoid(network(x.contiguous(memory_format=torch.channels_last)))[0, :, :h, :w].cpu().numpy()
    finally:
        network.train(was_training)
    return out[0].astype(np.float32), out[1].astype(np.float32)


def student_instances(foreground: np.ndarray, centre: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Nucleus instances (H, W) int32, numbered 1..N, of the student's maps: the foreground above ``threshold``, holes filled and
    pieces under ``MIN_PIECE`` px dropped, split by a watershed of the negated centre-ness from its ``MARKER_HEIGHT``
    maxima; a piece with no such maximum is one nucleus. An instance whose centre-ness stays below ``MIN_CENTRE`` is
    dropped."""
    mask = ndimage.binary_fill_holes(foreground > threshold)
    pieces, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, np.int32)
    sizes = np.bincount(pieces.ravel())
    mask &= (sizes >= MIN_PIECE)[pieces] & (pieces > 0)
    pieces, n = ndimage.label(mask)
    # the h-maxima: maxima of the centre-ness with every dome lowered by MARKER_HEIGHT (a morphological
    # reconstruction), so a dome with two equal tops (a saturated sigmoid) is still one marker. Found on every second
    # pixel: centre-ness is smooth, and the reconstruction is most of the split's time.
    heights = np.where(mask, centre, 0).astype(np.float32)[::2, ::2]
    tops, n_markers = ndimage.label(local_maxima(reconstruction(heights - MARKER_HEIGHT, heights)) & (heights > 0))
    markers = np.zeros(mask.shape, np.int32)
    markers[::2, ::2] = tops
    markers[~mask] = 0
    labels = watershed(-centre, markers, mask=mask)
    unmarked = np.setdiff1d(np.arange(1, n + 1), pieces[markers > 0])
    if len(unmarked):  # pieces without a marker keep their own label
        lonely = np.isin(pieces, unmarked)
        relabel = np.zeros(n + 1, np.int32)
        relabel[unmarked] = np.arange(n_markers + 1, n_markers + 1 + len(unmarked))
        labels = np.where(lonely, relabel[pieces], labels)
    peaks = ndimage.maximum(centre, labels, index=np.arange(labels.max() + 1))
    believed = np.asarray(peaks, np.float32) >= MIN_CENTRE
    believed[0] = False
    # numbered 1..N again: markers outside the mask and dropped instances left gaps
    return relabel_sequential(np.where(believed[labels], labels, 0).astype(np.int32))[0]
