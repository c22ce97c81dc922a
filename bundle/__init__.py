"""DiffKillR as a MONAI bundle: few-shot cell annotation by archetype matching and diffeomorphic registration.

The pipeline's stages, in the order they run, each in its own module:

    data        read images and instance annotations (XML, GeoJSON, label images), dataset folders; write atomically
    bank        the archetype bank (cell-centred crops from ``patches``): the only ground truth the method sees
    detect      hematoxylin nucleus proposals, calibrated on the bank
    match       each proposal to its nearest archetype (DiffeoInvariantNet embeddings)
    register    dihedral pre-alignment, DiffeoMappingNet, and the warp of the archetype's labels onto the cell
    stitch      warped masks into one instance label map and its per-cell table
    outputs     the files a user opens: label TIFF, QuPath GeoJSON, CSV, overlay

Beside them: ``networks`` (DiffeoInvariantNet, DiffeoMappingNet), ``fields`` (displacement fields and the dihedral
group), ``augment`` (realistic diffeomorphisms), ``inferer`` (the stages above as MONAI's inferer), ``workflow``
(progress and error lines of the inference config), ``checkpoint`` (weights files and their recipes), ``losses`` and
``training`` (the training configs' pieces). ``benchmarks`` measures the bundle against baselines; the bundle itself
never imports it.
"""

from . import (  # noqa: F401  (configs use bundle.<module> after `$import bundle`)
    augment, bank, checkpoint, data, detect, fields, inferer, losses, match, networks, outputs, patches, register,
    stitch, training, workflow,
)
