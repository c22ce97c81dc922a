"""baselines: what the bundle is measured against, on the same cells and images.

* ``registration``: SimpleITK diffeomorphic demons and ANTs SyN, with the contract of DiffeoMappingNet;
* ``segmentation``: label-free classical nucleus counting and segmentation (LoG blobs, Otsu + watershed);
* ``unet``: a MONAI ``BasicUNet`` trained on exactly the bank's labels (the same annotation budget).
"""
