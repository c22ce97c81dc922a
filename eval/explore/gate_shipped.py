# Exploratory (v0.5.0, session of 2026-11-22; not part of the bundle): can a BasicUNet trained on the bank
# (bundle.baselines.unet, + 32 counted background patches) gate the stain foreground (Otsu AND p > t)?
# Scored on the Kidney / Lung test tiles after the full workflow. Run from the repo root; output in gate_shipped.log.
import sys, numpy as np, torch, time
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/scripts')
torch.set_num_threads(2)
from whole_image import workflow, truth_of
from bundle.data import list_dataset, load_sample
from bundle.detect import stain_of, otsu_foreground, split_nuclei, piece_centroids
from bundle.metrics import counting_scores
from bundle.baselines.unet import build_network, unet_probability
from skimage.morphology import remove_small_objects
from pathlib import Path
D = '/work/shared/data/monuseg'
inferer, net = workflow(Path('/work/main/models/bank.pt'), 'cpu'); inferer.setup(); P = inferer.proposal_params
# eval/explore/unet_shipped.pt is written by eval/explore/gate_train_tiles.py
unet = build_network(); unet.load_state_dict(torch.load('eval/explore/unet_shipped.pt')); unet.eval()
res = {}
for s in list_dataset(D, split='test', organ=None):
    if s.organ not in ('Kidney', 'Lung'): continue
    image, gt = load_sample(s); tc = np.asarray(truth_of(gt)['centroids'])
    fg = otsu_foreground(stain_of(image), opening_radius=P['opening_radius'], min_size=P['min_size'])
    prob = unet_probability(unet, image)
    row = {}
    for th in (0.0, 0.1, 0.2, 0.35):
        f = fg if th == 0 else remove_small_objects(fg & (prob > th), max_size=P['min_size'] - 1)
        a = inferer.annotate(image, net, centres=piece_centroids(split_nuclei(f, P['min_distance'])))
        c = a.cells; det = np.stack([c['centroid_row'], c['centroid_col']], 1)
        row[th] = counting_scores(det, tc)['f1']
        res.setdefault((s.organ, th), []).append(row[th])
    print(s.organ, s.image_id[:12], {k: f"{v:.3f}" for k, v in row.items()}, flush=True)
print({f"{k[0]} {k[1]}": f"{np.mean(v):.3f}" for k, v in res.items()})
