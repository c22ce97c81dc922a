# Exploratory (v0.6.0, 2026-11-22; not part of the bundle): a 'fully annotated small regions' protocol with about as many
# annotated nuclei as a 10 % bank: the BasicUNet of bundle.baselines.unet trained with full supervision on random 96 px
# regions of the organ's train tiles (ring=96 makes every pixel of a region supervised), its foreground (p > 0.5) or
# the detector's foreground AND p > 0.5 split with the per-organ bank's spacing, full workflow, test tiles. Log: regions.log.
import sys, numpy as np, torch, time
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/scripts')
torch.set_num_threads(2)
from whole_image import workflow, instance_centroids
from bundle.data import list_dataset, load_sample
from bundle.bank import load_bank
from bundle.detect import stain_of, nuclear_foreground, split_nuclei, piece_centroids
from bundle.metrics import counting_scores
from bundle.baselines.unet import train_unet, unet_probability
from skimage.morphology import remove_small_objects
from scipy import ndimage
from pathlib import Path
D = '/work/shared/data/monuseg'; S = 96
for organ, n_cells in (('Kidney', 106), ('Lung', 128)):
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        tiles = [load_sample(s) for s in list_dataset(D, split='train', organ=organ)]
        imgs, masks, count = [], [], 0
        while count < n_cells:
            im, lab = tiles[rng.integers(len(tiles))]
            r, c = rng.integers(0, 1000 - S, 2)
            l = lab[r:r+S, c:c+S]
            ids = np.unique(l[l > 0])
            # nuclei counted: those whose centroid lies in the region (the annotator draws every nucleus touching it)
            cen = instance_centroids(lab)
            count += int(((cen[:, 0] >= r) & (cen[:, 0] < r + S) & (cen[:, 1] >= c) & (cen[:, 1] < c + S)).sum())
            imgs.append((im[:, r:r+S, c:c+S].clamp(0, 1) * 255).round().to(torch.uint8)); masks.append(torch.from_numpy(l > 0)[None])
        fake = {'images': torch.stack(imgs), 'masks': torch.stack(masks)}
        t = time.time()
        net = train_unet(fake, background=None, seed=seed, device='cpu', progress=False, ring=S)
        print(organ, seed, f"{len(imgs)} regions, {count} nuclei, trained {time.time()-t:.0f}s", flush=True)
        bp = Path(f'/work/main/eval/work/{organ.lower()}_f0.1_s{seed}/bank.pt'); P = load_bank(bp)['meta']['proposals']
        inferer, mnet = workflow(bp, 'cpu'); inferer.setup()
        for s in list_dataset(D, split='test', organ=organ):
            image, gt = load_sample(s); tc = instance_centroids(gt); st = stain_of(image)
            prob = unet_probability(net, image)
            fg = nuclear_foreground(st, P['opening_radius'], P['min_size'])
            row = {}
            for name, f in (('stain', fg), ('unet', remove_small_objects(ndimage.binary_fill_holes(prob > 0.5), max_size=P['min_size']-1)),
                            ('stain&unet.5', remove_small_objects(fg & (prob > 0.5), max_size=P['min_size']-1))):
                props = piece_centroids(split_nuclei(f, P['min_distance']))
                a = inferer.annotate(image, mnet, centres=props); cc = a.cells
                det = np.stack([cc['centroid_row'], cc['centroid_col']], 1)
                row[name] = round(counting_scores(det, tc)['f1'], 3)
            print(' ', s.image_id[:12], row, flush=True)
