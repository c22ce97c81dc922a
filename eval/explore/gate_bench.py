# Exploratory (v0.5.0, session of 2026-11-22; not part of the bundle): can a BasicUNet trained on the bank
# (bundle.baselines.unet, + 32 counted background patches) gate the stain foreground (Otsu AND p > t)?
# Scored on the Kidney / Lung test tiles after the full workflow. Run from the repo root; output in gate_bench.log.
import sys, numpy as np, torch, time, json
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/scripts')
torch.set_num_threads(2)
from whole_image import workflow, truth_of
from bundle.data import list_dataset, load_sample
from bundle.bank import load_bank
from bundle.detect import stain_of, otsu_foreground, split_nuclei, piece_centroids, nucleus_pieces
from bundle.metrics import counting_scores
from bundle.baselines.unet import background_patches, train_unet, unet_probability
from skimage.morphology import remove_small_objects
from pathlib import Path
D = '/work/shared/data/monuseg'
TH = (0.1, 0.2, 0.35)
out = []
for organ in ('Kidney', 'Lung'):
    for seed in (0, 1, 2):
        bp = Path(f'/work/main/eval/work/{organ.lower()}_f0.1_s{seed}/bank.pt')
        bank = load_bank(bp); P = bank['meta']['proposals']
        inferer, net = workflow(bp, 'cpu'); inferer.setup()
        t = time.time()
        unet = train_unet(bank, background=background_patches(D, seed=seed, organ=organ), seed=seed, device='cpu', progress=False)
        tt = time.time() - t
        for s in list_dataset(D, split='test', organ=organ):
            image, gt = load_sample(s); tc = np.asarray(truth_of(gt)['centroids'])
            st = stain_of(image)
            fg = otsu_foreground(st, opening_radius=P['opening_radius'], min_size=P['min_size'])
            t = time.time(); prob = unet_probability(unet, image); tp = time.time() - t
            row = {'organ': organ, 'seed': seed, 'tile': s.image_id, 'unet_train_s': tt, 'prob_s': tp}
            for th in (0.0,) + TH:
                f = fg if th == 0 else remove_small_objects(fg & (prob > th), max_size=P['min_size'] - 1)
                props = piece_centroids(split_nuclei(f, P['min_distance']))
                a = inferer.annotate(image, net, centres=props)
                c = a.cells
                det = np.stack([c['centroid_row'], c['centroid_col']], 1)
                sc = counting_scores(det, tc)
                row[f'th{th}'] = {'prop_f1': counting_scores(props, tc)['f1'], 'f1': sc['f1'], 'p': sc['precision'], 'r': sc['recall']}
            out.append(row)
            print(organ, seed, s.image_id[:12], f"prob {tp:.1f}s", {k: f"{v['f1']:.3f}" for k, v in row.items() if k.startswith('th')}, flush=True)
json.dump(out, open('eval/explore/gate_bench.json', 'w'), indent=1)
for organ in ('Kidney', 'Lung'):
    rows = [r for r in out if r['organ'] == organ]
    print(organ, {k: f"{np.mean([r[k]['f1'] for r in rows]):.3f} P{np.mean([r[k]['p'] for r in rows]):.3f} R{np.mean([r[k]['r'] for r in rows]):.3f}" for k in rows[0] if k.startswith('th')})
