"""benchmarks: how the bundle is measured, apart from what it runs (the bundle never imports this package).

    protocol      seeded banks, trained networks, held-out cells, the machine: what every benchmark shares
    whole_image   test images annotated end to end, against the baselines (counting, segmentation, orientation)
    matching      DiffeoInvariantNet, the paper's Table I
    registration  DiffeoMappingNet against demons and ANTs, and on synthetic shapes (``synthetic``)
    speed         inference settings compared in one process
    tuning        the label-free baselines' parameters, from grids on the train images
    sizes         how large the nuclei are (the patch size's measurement)
    metrics       the scores, and mean ± sd
    baselines     demons / ANTs registration, LoG / Otsu + watershed, a U-Net trained on the bank
    report        docs/results.md, eval/report.md and the model card's figures, from the artifacts

``scripts/benchmark.py`` and ``scripts/make_results.py`` are their command lines; ``scripts/run_benchmarks.sh`` lists
the commands behind every figure in docs/.
"""
