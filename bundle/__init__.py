"""DiffKillR as a MONAI bundle.

The pipeline stages, in the order the method runs them, each in its own module:

    data        read images and instance annotations (XML, GeoJSON, label images), dataset folders
    patches     cell-centred patches, the orientation ramp
    bank        the archetype bank: the only ground truth the method sees
    transforms  realistic diffeomorphisms (rotation, stretches, smooth velocity fields) as MONAI transforms
    networks    DiffeoInvariantNet (match) and DiffeoMappingNet (register)
    matching    nearest-archetype search and the matching metrics
"""

from . import (  # noqa: E402,F401  (configs use bundle.<stage>)
    annotate, bank, data, detect, losses, matching, metrics, networks, patches, register, stitch, training, transforms,
)
