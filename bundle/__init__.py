"""DiffKillR as a MONAI bundle: few-shot cell annotation by archetype matching and diffeomorphic registration.

The pipeline's stages, in the order they run, each in its own module:

    data        read images and instance annotations (XML, GeoJSON, label images), dataset folders; write atomically
    bank        the archetype bank (cell-centred crops from ``patches``): the only ground truth the method sees
    detect      the student's nuclei (``student``); without a student, hematoxylin proposals calibrated on the bank
    match       each detection to its nearest archetype (DiffeoInvariantNet embeddings)
    register    dihedral pre-alignment, DiffeoMappingNet, and the warp of the archetype's labels onto the cell
    refine      each warped shape deformed once more to follow the image (the student's foreground)
    stitch      warped masks into one instance label map and its per-cell table
    outputs     the files a user opens: label TIFF, QuPath GeoJSON, CSV, overlay

``student`` is the dense network that ``selftrain`` distils from the workflow's own annotations of the unlabelled
train images. Beside them: ``networks`` (DiffeoInvariantNet, DiffeoMappingNet), ``fields`` (displacement fields and the dihedral
group), ``augment`` (realistic diffeomorphisms), ``inferer`` (the stages above as MONAI's inferer), ``workflow``
(progress and error lines of the inference config), ``checkpoint`` (weights files and their recipes), ``losses`` and
``training`` (the training configs' pieces). ``benchmarks`` measures the bundle against baselines; the bundle itself
never imports it.
"""

from . import (  # noqa: F401  (configs use bundle.<module> after `$import bundle`)
    augment, bank, checkpoint, data, detect, fields, inferer, losses, match, networks, outputs, patches, refine,
    register, selftrain, stitch, student, training, workflow,
)
