"""workflow: what makes ``configs/inference.yaml`` a command a person runs: progress, one line per image, and one
line per error.

The config's ``initialize`` calls ``one_line_errors``: from then on a ``DataError`` (bad input, named by file) ends
the process with ``error: <file>: <problem>`` and exit status 1 instead of a traceback, wherever it was raised: while
the config is parsed, in ``initialize``, or in the evaluator's loop. Any other exception keeps its traceback: it is
a bug to report, not a mistake of the user's.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import tifffile
import torch
from ignite.engine import Events
from tqdm.auto import tqdm

from .data import DataError, image_id_of, is_slide, remove_dead_temporaries, written_atomically
from .match import UNLIKE_THE_BANK, unlike_the_bank
from .outputs import output_names
from .slide import slide_output_names
from .stitch import CELL_COLUMNS, CELLS_KEY

__all__ = ["one_line_errors", "error_line", "check_device", "check_output_dir", "outputs_complete",
           "still_to_annotate", "AnnotationProgress"]


def error_line(error: BaseException) -> str | None:
    """``error: <message>`` for the first ``DataError`` in an exception's chain (causes and contexts), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DataError):
            return f"error: {error}"
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def one_line_errors() -> None:
    """Report uncaught ``DataError`` as one line on stderr and exit 1 (``sys.excepthook``); others as usual."""
    # ignite logs "... terminating due to exception" at ERROR, from inside its except block, before the error reaches
    # the hook: for a user's mistake that would be two more lines than the one promised. Added on every call: a second
    # config run in one process may have new handlers (addFilter skips a filter a handler has already)
    for handler in logging.getLogger().handlers:
        handler.addFilter(not_about_a_user_error)
    default = sys.excepthook
    if getattr(default, "one_line_errors", False):  # installed already (a second config run in one process)
        return

    def hook(kind, error, trace):
        line = error_line(error)
        if line is None:
            default(kind, error, trace)
        else:
            for bar in list(getattr(tqdm, "_instances", ())):  # an open progress bar would share the error's line
                bar.close()
            print(line, file=sys.stderr)
            sys.exit(1)

    hook.one_line_errors = True
    sys.excepthook = hook


def not_about_a_user_error(record: logging.LogRecord) -> bool:
    """Logging filter: drop a record logged while a ``DataError`` (or an error it caused) is being handled."""
    return record.levelno < logging.ERROR or error_line(sys.exc_info()[1]) is None


def check_device(device) -> torch.device:
    """The device a config asks for (``--device``), refused with one line when this machine cannot give it. The
    configs call it in ``initialize``, before any weights are moved or any image is read."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise DataError(f"device: {device!r} is not a device torch knows (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"device: {device} was asked for, but torch sees no CUDA GPU here; leave --device out to "
                            "run on the CPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"device: {device} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def check_output_dir(output_dir) -> Path:
    """The folder the outputs go to (``--output_dir``), created if missing and tried with a file, refused with one
    line when nothing can be written there: found before the first image is annotated, not after it. What killed
    runs left half-written there (hidden temporary folders of dead processes) is removed."""
    folder = Path(output_dir)
    check = folder / f".diffkillr_write_check.{os.getpid()}"  # one per process: torchrun's ranks check at once
    with written_atomically(check) as (probe,):
        probe.write_bytes(b"")
    check.unlink()
    remove_dead_temporaries(folder)
    return folder


def _csv_rows(path: Path) -> int:
    with open(path, newline="") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def outputs_complete(output_dir, image) -> bool:
    """Whether ``image`` (a path) already has all its outputs in ``output_dir``, each whole and agreeing with the
    others: for an image, as many CSV rows as GeoJSON features and as the label map's largest label; for a slide, no
    more features than rows (a slide's cell whose pixels all went to an earlier region keeps its row but has no
    outline). A run killed while publishing an image's files leaves some of them new and some missing: that image is
    not complete."""
    image_id = image_id_of(str(image))
    names = slide_output_names(image_id) if is_slide(image) else output_names(image_id)
    paths = {key: Path(output_dir) / name for key, name in names.items()}
    if not all(path.is_file() for path in paths.values()):
        return False
    try:
        rows = _csv_rows(paths["csv"])
        features = len(json.loads(paths["geojson"].read_text())["features"])
        if "overlay" in paths:
            return features == rows == int(tifffile.imread(paths["labels"]).max(initial=0))
        return features <= rows
    except (OSError, ValueError, KeyError, TypeError):  # unreadable, or not what the bundle writes
        return False


def still_to_annotate(images: list, output_dir, resume: bool = False) -> list:
    """``images`` (a datalist of ``{"image": path}`` or a list of paths), less those with complete outputs in
    ``output_dir`` (``outputs_complete``) when ``resume``: a run killed half-way, run again with ``--resume true``,
    continues where it stopped. Says how many it skips."""
    if not resume:
        return list(images)
    todo = [item for item in images
            if not outputs_complete(output_dir, item["image"] if isinstance(item, dict) else item)]
    if len(todo) < len(images):
        print(f"resume: {len(images) - len(todo)} of {len(images)} images already have complete outputs in "
              f"{output_dir}: skipped")
    return todo


class AnnotationProgress:
    """Evaluator handler: a progress bar over the images, a line per image (cells found, seconds) and, at the end,
    where the outputs are. ``bar`` False: the lines without the bar (torchrun's ranks after the first)."""

    def __init__(self, output_dir, bar: bool = True):
        self.output_dir = Path(output_dir)
        self.show_bar, self.bar, self.start = bar, None, 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self.image_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.image_done)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        self.bar = tqdm(total=engine.state.epoch_length, desc="annotating", unit="image", disable=not self.show_bar)

    def image_started(self, engine) -> None:
        self.start = time.perf_counter()

    def image_done(self, engine) -> None:
        seconds = time.perf_counter() - self.start
        for item in engine.state.output:
            cells = item["pred"].meta[CELLS_KEY]
            name = image_id_of(item["image"].meta.get("filename_or_obj", "image"))
            tqdm.write(f"{name}: {len(cells)} cells in {seconds:.1f} s")
            median = unlike_the_bank(cells[:, CELL_COLUMNS.index("match_distance")])
            if median is not None:
                tqdm.write(f"{name}: warning: its cells look like none of the bank's (median match distance "
                           f"{median:.2f}, above {UNLIKE_THE_BANK}); is it tissue at the bank's stain and "
                           "magnification? Check these cells before using them")
        self.bar.update(1)

    def completed(self, engine) -> None:
        self.bar.close()
        print(f"outputs in {self.output_dir.resolve()}")
