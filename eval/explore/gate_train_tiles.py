# Exploratory (v0.5.0, 2026-11-22; not part of the bundle): the BasicUNet of bundle.baselines.unet trained on the
# shipped bank + 32 counted background patches, used to gate the Otsu foreground (Otsu AND p > t), proposals only
# (no registration), counting F1 on the 13 train tiles (the bank holds 10 % of their cells: development figures).
import sys, numpy as np, torch, time
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/scripts')
torch.set_num_threads(2)
from whole_image import truth_of
from bundle.data import list_dataset, load_sample
from bundle.bank import load_bank
from bundle.detect import stain_of, otsu_foreground, split_nuclei, piece_centroids
from bundle.metrics import counting_scores, pixel_f1
from bundle.baselines.unet import background_patches, train_unet, unet_probability
from skimage.morphology import remove_small_objects
from scipy import ndimage
bank = load_bank('/work/main/models/bank.pt')
t = time.time()
bg = background_patches('/work/shared/data/monuseg', seed=0)
net = train_unet(bank, background=bg, seed=0, device='cpu', progress=False)
print('trained', time.time() - t, flush=True)
torch.save(net.state_dict(), 'eval/explore/unet_shipped.pt')
keys = ['otsu', 'and.2', 'and.35', 'and.5', 'unet.5']
res = {k: [] for k in keys}; pf = {k: [] for k in keys}
for s in list_dataset('/work/shared/data/monuseg', split='train'):
    image, gt = load_sample(s); tc = np.asarray(truth_of(gt)['centroids'])
    fg = otsu_foreground(stain_of(image), opening_radius=1, min_size=124)
    prob = unet_probability(net, image)
    fgs = {'otsu': fg, 'unet.5': ndimage.binary_fill_holes(prob > .5)}
    for th in (.2, .35, .5):
        fgs[f'and{str(th)[1:]}'] = fg & (prob > th)
    for k, f in fgs.items():
        f = remove_small_objects(f, max_size=123)
        res[k].append(counting_scores(piece_centroids(split_nuclei(f, 14)), tc)['f1']); pf[k].append(pixel_f1(f.astype(int), (gt>0).astype(int)))
    print(s.image_id[:12], {k: f"{res[k][-1]:.3f}/{pf[k][-1]:.3f}" for k in keys}, flush=True)
print({k: f"{np.mean(res[k]):.3f}/{np.mean(pf[k]):.3f}" for k in keys})
