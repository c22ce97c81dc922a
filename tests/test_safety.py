"""Safe by construction: no file the bundle reads can run code, and nothing it runs reaches for the network."""

import ast
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from bundle.data import DataError

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = sorted([*(ROOT / "bundle").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")])


def calls(path: Path):
    """Every call in a source file, as (dotted name of the callee, the call node)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_every_checkpoint_the_product_loads_is_loaded_weights_only():
    loads = [(path, node) for path in PRODUCT for name, node in calls(path) if name == "torch.load"]
    assert loads, "the product loads its checkpoints with torch.load"
    unsafe = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, node in loads
              if not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)]
    assert not unsafe


def test_no_yaml_pickle_eval_or_exec_reads_a_users_file_or_string():
    # yaml.safe_load is the only YAML reader (MONAI's ConfigParser uses it too); eval-like calls of MONAI's config
    # syntax ("$...") run only the config a user chose to run, never the contents of an image, label or bank
    forbidden = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads", "eval", "exec",
                 "compile", "marshal.loads", "numpy.load", "np.load"}
    found = [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for path in PRODUCT for name, node in calls(path)
             if name in forbidden]
    assert not found


class _Payload:
    """A pickled object that would create ``marker`` when unpickled: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_exported_network_that_carries_code_is_refused_without_running_it(tmp_path):
    from bundle.checkpoint import ExportedNetwork

    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.rand(1, 3),))
    good = tmp_path / "good.pt2"
    torch.export.save(program, str(good))
    ExportedNetwork(good)  # a plain export loads

    # the same archive with its first weight stored as a pickle that runs code: torch.export.load itself would unpickle
    # it without weights_only
    marker = tmp_path / "code_ran"
    bad = tmp_path / "bad.pt2"
    payload = io.BytesIO()
    torch.save({"weight": _Payload(marker)}, payload)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"], weight = True, first["path_name"]
                data = json.dumps(config).encode()
            target.writestr(item, data)
    with zipfile.ZipFile(bad) as source, zipfile.ZipFile(tmp_path / "worse.pt2", "w") as target:
        for item in source.infolist():
            target.writestr(item, payload.getvalue() if item.filename.endswith(f"weights/{weight}")
                            else source.read(item.filename))
    with pytest.raises(DataError, match="worse.pt2: refused, its .* holds not only tensors"):
        ExportedNetwork(tmp_path / "worse.pt2")
    assert not marker.exists()


# Loaded first by every Python process started with this folder on PYTHONPATH: each attempt to resolve a name or open
# an internet socket is written to NO_NETWORK_LOG and fails, as on a machine without a network.
NO_NETWORK = textwrap.dedent("""
    import os, socket

    def _refuse(what):
        with open(os.environ["NO_NETWORK_LOG"], "a") as log:
            log.write(what + "\\n")
        raise OSError("no network (test)")

    def _connect(self, address, *args, _connect=socket.socket.connect):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(f"connect {address}")
        return _connect(self, address, *args)

    def _getaddrinfo(host, *args, **kwargs):
        _refuse(f"getaddrinfo {host}")

    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect
    socket.getaddrinfo = _getaddrinfo
""")

DRIVER = textwrap.dedent("""
    import sys
    from monai.bundle import run

    root, tiny, bank, out = sys.argv[1:5]
    common = dict(bundle_root=root, device="$torch.device('cpu')")
    # the main job on the embedded sample, with the shipped models
    run(config_file=f"{root}/configs/inference.yaml", output_dir=f"{out}/annotations", **common)
    # both trainers, one epoch each, and one round of self-training
    for net in ("invariant", "mapping"):
        run(config_file=[f"{root}/configs/train.yaml", f"{root}/configs/train_{net}.yaml"], bank_path=bank,
            ckpt_dir=f"{out}/{net}", cells_per_batch=8, val_interval=1, **{"train#trainer#max_epochs": 1}, **common)
    run(config_file=[f"{root}/configs/inference.yaml", f"{root}/configs/selftrain.yaml"], dataset_dir=tiny,
        bank_path=bank, student_out=f"{out}/student.pt", iterations=2, rounds=1, **common)
""")


@pytest.mark.slow
def test_the_main_job_and_every_trainer_run_with_the_network_unavailable_and_never_try_it(tiny_dataset, tmp_path):
    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_NETWORK)
    (tmp_path / "driver.py").write_text(DRIVER)
    log = tmp_path / "network.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
           "NO_NETWORK_LOG": str(log)}

    probe = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen('http://a.b', "
                            "timeout=5)"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "no network" in probe.stderr  # the blocker is in force
    log.unlink()

    result = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(ROOT), str(tiny_dataset), str(bank),
                             str(tmp_path / "out")], env=env, capture_output=True, text=True, cwd=tmp_path,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "out" / "annotations").glob("*_labels.tif"))) == 1
    assert (tmp_path / "out" / "invariant" / "model.pt").is_file()
    assert (tmp_path / "out" / "mapping" / "model.pt").is_file()
    assert (tmp_path / "out" / "student.pt").is_file()
    assert not log.exists(), f"tried the network: {log.read_text()}"
