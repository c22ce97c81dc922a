"""The bundle's configs: metadata that validates against MONAI's schema, configs that parse and build."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, verify_metadata

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"


def test_metadata_validates_against_the_bundle_schema():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))


def test_monai_verify_metadata_accepts_it_offline(tmp_path):
    # an existing schema file is not downloaded again: the check runs without a network
    schema = tmp_path / "schema.json"
    schema.write_bytes(SCHEMA.read_bytes())
    verify_metadata(meta_file=str(ROOT / "configs" / "metadata.json"), filepath=str(schema))


def test_metadata_missing_a_required_field_is_rejected():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(meta, json.loads(SCHEMA.read_text()))


TRAIN = {"invariant": ["train.yaml", "train_invariant.yaml"], "mapping": ["train.yaml", "train_mapping.yaml"]}


def training_config(which: str, **overrides) -> ConfigParser:
    """The shared training base with one network's overlay, as `--config_file "['configs/train.yaml', ...]"` reads it."""
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / name) for name in TRAIN[which]])
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')", **overrides})
    return parser


def recipe(which: str, **overrides) -> dict:
    """The recipe a run of the training config would store in its checkpoints."""
    return training_config(which, **overrides).get_parsed_content("recipe").state_dict()


@pytest.mark.parametrize("which", ["invariant", "mapping"])
def test_each_training_config_builds_its_trainer_over_the_shared_base(tiny_dataset, tmp_path, which):
    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    config = training_config(which, bank_path=str(bank), ckpt_dir=str(tmp_path / "ckpt"))
    trainer = config.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs == config.get_parsed_content("recipe").values["max_epochs"]
    assert isinstance(config.get_parsed_content("network"), torch.nn.Module)


def test_the_shipped_encoder_was_made_by_the_defaults_of_its_config():
    from bundle.checkpoint import recipe_of

    assert recipe_of(ROOT / "models" / "invariant.pt") == recipe("invariant")


def test_the_shipped_mapping_net_was_made_by_the_defaults_then_fine_tuned_from_them(tmp_path):
    from bundle.checkpoint import recipe_of

    # stage 1 from random weights; stage 2 from stage 1's model.pt, the same config given --pretrained
    torch.save({"recipe": recipe("mapping")}, tmp_path / "stage1.pt")
    assert recipe_of(ROOT / "models" / "model.pt") == recipe("mapping", pretrained=str(tmp_path / "stage1.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["invariant", "mapping"])
def test_training_writes_the_best_weights_with_their_recipe_and_resumes_from_the_last_epoch(tiny_dataset, tmp_path,
                                                                                            which):
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank
    from bundle.checkpoint import recipe_of

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    settings = dict(bank_path=str(bank), ckpt_dir=str(tmp_path / "run"), device="$torch.device('cpu')",
                    cells_per_batch=8, val_interval=1)

    def train(epochs):
        workflow = ConfigWorkflow(config_file=[str(ROOT / "configs" / name) for name in TRAIN[which]],
                                  workflow_type=None, bundle_root=str(ROOT), **settings,
                                  **{"train#trainer#max_epochs": epochs})
        workflow.initialize()
        workflow.run()
        return workflow.parser.get_parsed_content("train#trainer")

    train(1)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert recipe_of(tmp_path / "run" / "model.pt")["max_epochs"] == 1
    trainer = train(2)  # the same folder again: continues from epoch 1 instead of starting over
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * trainer.state.epoch_length
    assert (tmp_path / "run" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("which, metric", [("invariant", "val_map"), ("mapping", "val_dice")])
def test_tracking_with_mlflow_records_every_iterations_loss_and_each_validation_in_the_run_folder(tiny_dataset,
                                                                                                 tmp_path, which,
                                                                                                 metric):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: see the test command in README.md")
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    # as `python -m monai.bundle run ... --tracking mlflow` runs it: MONAI's own settings, nothing of ours
    workflow = ConfigWorkflow(config_file=[str(ROOT / "configs" / name) for name in TRAIN[which]],
                              workflow_type=None, bundle_root=str(ROOT), bank_path=str(bank), tracking="mlflow",
                              ckpt_dir=str(tmp_path / "run"), device="$torch.device('cpu')", cells_per_batch=8,
                              val_interval=1, **{"train#trainer#max_epochs": 2})
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlruns.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == trainer.state.iteration
    assert len(client.get_metric_history(run.info.run_id, metric)) == 2  # one validation per epoch
    assert list((tmp_path / "run").glob("config_*.json"))  # the executed config, beside the checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("which", ["invariant", "mapping"])
def test_a_resumed_run_reaches_the_weights_of_an_uninterrupted_one(tiny_dataset, tmp_path, which):
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")

    def train(folder, epochs):
        workflow = ConfigWorkflow(config_file=[str(ROOT / "configs" / name) for name in TRAIN[which]],
                                  workflow_type=None, bundle_root=str(ROOT), bank_path=str(bank),
                                  ckpt_dir=str(tmp_path / folder), device="$torch.device('cpu')", cells_per_batch=8,
                                  val_interval=1, **{"train#trainer#max_epochs": 3})
        workflow.initialize()
        if epochs < 3:  # killed after this many epochs: the run stops there, its checkpoint written
            trainer = workflow.parser.get_parsed_content("train#trainer")
            trainer.add_event_handler(Events.EPOCH_COMPLETED(once=epochs), lambda engine: engine.terminate())
        workflow.run()

    train("whole", 3)
    train("killed", 1)
    train("killed", 3)  # the same command again: resumes from epoch 1
    whole = torch.load(tmp_path / "whole" / "checkpoint_epoch=3.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "killed" / "checkpoint_epoch=3.pt", weights_only=True)["model"]
    # same batches, same deformations, same arithmetic on one machine: equal to float rounding
    assert all(torch.allclose(whole[k].float(), resumed[k].float(), atol=1e-6) for k in whole)


@pytest.mark.slow
def test_resuming_is_refused_for_another_bank_or_a_damaged_checkpoint_and_a_short_run_still_writes_its_model(
        tiny_dataset, tmp_path):
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank
    from bundle.workflow import error_line

    banks = [save_bank(build_bank(tiny_dataset, fraction=fraction, seed=0, progress=False), tmp_path / f"{i}.pt")
             for i, fraction in enumerate((1.0, 0.5))]

    def train(bank, epochs=1, val_interval=5):
        workflow = ConfigWorkflow(config_file=[str(ROOT / "configs" / name) for name in TRAIN["invariant"]],
                                  workflow_type=None, bundle_root=str(ROOT), bank_path=str(bank),
                                  ckpt_dir=str(tmp_path / "run"), device="$torch.device('cpu')", cells_per_batch=8,
                                  val_interval=val_interval, **{"train#trainer#max_epochs": epochs})
        workflow.initialize()
        workflow.run()

    train(banks[0])  # one epoch, validation every five: validated after its last epoch all the same
    assert (tmp_path / "run" / "model.pt").is_file()
    with pytest.raises(Exception) as raised:
        train(banks[1], epochs=2)
    assert "this run folder holds training on another bank" in error_line(raised.value)
    checkpoint = next((tmp_path / "run").glob("checkpoint_epoch=*.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a run killed while writing it
    with pytest.raises(Exception) as raised:
        train(banks[0], epochs=2)
    assert error_line(raised.value).startswith(f"error: {checkpoint}: not a readable training checkpoint")


@pytest.mark.parametrize("which", ["invariant", "mapping"])
def test_the_evaluate_overlay_runs_validation_on_given_weights(tiny_dataset, tmp_path, which):
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    torch.save({"model": training_config(which).get_parsed_content("network_def").state_dict()},
               tmp_path / "weights.pt")
    workflow = ConfigWorkflow(
        config_file=[str(ROOT / "configs" / name) for name in TRAIN[which] + ["evaluate.yaml"]], workflow_type=None,
        bundle_root=str(ROOT), bank_path=str(bank), ckpt_dir=str(tmp_path / "eval"), checkpoint=str(tmp_path / "weights.pt"),
        device="$torch.device('cpu')")
    workflow.initialize()
    workflow.run()
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert len(metrics) >= 1 and all(0.0 <= float(v) <= 1.0 for v in metrics.values())
    assert (tmp_path / "eval" / "metrics.csv").is_file()


def test_the_multi_gpu_overlay_merges_over_a_training_config():
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / name) for name in TRAIN["invariant"] + ["multi_gpu_train.yaml"]])
    assert parser["network"]["_target_"].endswith("DistributedDataParallel")
    assert parser["train#dataloader#sampler"] == "@train#sampler"
    assert parser["train#dataloader#dataset"] == "@train#dataset"  # the overlay changes keys, not the whole section


def test_the_multi_gpu_overlay_keeps_every_initialize_step_of_the_training_config():
    base, overlay = ConfigParser(), ConfigParser()
    base.read_config([str(ROOT / "configs" / name) for name in TRAIN["invariant"]])
    overlay.read_config([str(ROOT / "configs" / name) for name in TRAIN["invariant"] + ["multi_gpu_train.yaml"]])
    # an overlay replaces a list whole: a step it forgets (the device check, --pretrained) would silently not run
    steps = [step if isinstance(step, str) else step["_target_"] for step in overlay["initialize"]]
    for step in base["initialize"]:
        name = step if isinstance(step, str) else step["_target_"]
        assert name in steps or name.replace("(seed=@seed)", "(seed=@seed + dist.get_rank())") in steps, name


@pytest.mark.slow
@pytest.mark.parametrize("which", ["invariant", "mapping"])
def test_the_multi_gpu_overlay_trains_with_two_ranks_under_torchrun_on_cpu_and_both_resume(tiny_dataset, tmp_path,
                                                                                           which):
    from bundle.bank import build_bank, save_bank
    from bundle.checkpoint import recipe_of

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    configs = [str(ROOT / "configs" / name) for name in TRAIN[which] + ["multi_gpu_train.yaml"]]

    def torchrun(epochs: int, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
             "-m", "monai.bundle", "run", "--config_file", str(configs), "--bundle_root", str(ROOT),
             "--bank_path", str(bank), "--ckpt_dir", str(tmp_path / "run"), "--cells_per_batch", "8",
             "--val_interval", "1", "--train#trainer#max_epochs", str(epochs)],
            capture_output=True, text=True, cwd=tmp_path, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})

    result = torchrun(1, 600)
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 alone saves, and what it saves is the bare network's weights, loadable without DDP
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert recipe_of(tmp_path / "run" / "model.pt")["max_epochs"] == 1
    from bundle.checkpoint import load_weights

    load_weights(training_config(which).get_parsed_content("network_def"), tmp_path / "run" / "model.pt")
    # the same command for two epochs: both ranks continue from epoch 1 (a rank starting over would run one epoch
    # more than the other and wait on it forever)
    result = torchrun(2, 300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.slow
def test_the_zipped_bundle_downloaded_as_from_the_zoo_runs_from_another_folder_without_being_installed(tmp_path):
    # as a bundle from the model zoo arrives: a zip unpacked by monai.bundle.download, not a pip-installed package,
    # run from wherever the user is
    from monai.bundle import download

    from bundle.release import zip_bundle

    archive = zip_bundle(ROOT, tmp_path / "release" / "diffkillr.zip")
    download(name="diffkillr", bundle_dir=str(tmp_path / "zoo"), url=archive.resolve().as_uri(), progress=False)
    copy = tmp_path / "zoo" / "diffkillr"
    hide_the_installed_package = (
        "import sys, importlib.util, runpy; "
        "sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith('__editable__')]; "
        f"sys.path[:] = [p for p in sys.path if p not in ('', {str(ROOT)!r})]; "
        "assert importlib.util.find_spec('bundle') is None, 'the installed package is still importable'; "
        "sys.argv[0] = 'monai.bundle'; runpy.run_module('monai.bundle', run_name='__main__')")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", hide_the_installed_package, "run", "--config_file",
         str(copy / "configs" / "inference.yaml"), "--bundle_root", str(copy)],
        capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((copy / "outputs").glob("*.geojson"))) == len(list((copy / "docs" / "sample" / "images").iterdir()))
    # monai.bundle.load of the unpacked bundle: it builds a network only from configs/<type>.json (the bundle's configs
    # are YAML), so the user hands it the network and gets the shipped weights in it
    from monai.bundle import load

    from bundle.networks import DiffeoMappingNet

    network = load("diffkillr", bundle_dir=str(tmp_path / "zoo"), model=DiffeoMappingNet(3, backbone="voxelmorph"),
                   key_in_ckpt="model", device="cpu", progress=False)
    shipped = torch.load(ROOT / "models" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(network.state_dict()[k], shipped[k]) for k in shipped)


def test_the_inference_config_has_every_property_monais_infer_workflow_checks():
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(ROOT / "configs" / "inference.yaml"), workflow_type="infer",
                              bundle_root=str(ROOT), device="$torch.device('cpu')")
    workflow.initialize()
    assert not workflow.check_properties()  # None or []: nothing missing (bundle_root, dataset, evaluator, ...)


def test_network_def_passes_the_model_zoo_shape_check():
    from monai.bundle import verify_net_in_out

    # one tensor cat([archetype, cell]) in, one displacement field out, as metadata.json declares
    verify_net_in_out(net_id="network_def", meta_file=str(ROOT / "configs" / "metadata.json"),
                      config_file=str(ROOT / "configs" / "inference.yaml"), bundle_root=str(ROOT), device="cpu")


@pytest.mark.parametrize("device", ["cpu", "$torch.device('cpu')"])
def test_the_inference_config_takes_the_device_as_a_string_as_monai_label_passes_it(device):
    parser = ConfigParser(ConfigParser.load_config_file(str(ROOT / "configs" / "inference.yaml")))
    parser.update({"bundle_root": str(ROOT), "device": device})
    assert parser.get_parsed_content("batch_size") == 32
    assert next(parser.get_parsed_content("network").parameters()).device.type == "cpu"


def test_large_files_yml_lists_every_shipped_model_file_with_its_hash():
    from monai.apps.utils import check_hash

    listed = ConfigParser.load_config_file(str(ROOT / "large_files.yml"))["large_files"]
    assert sorted(entry["path"] for entry in listed) == sorted(f"models/{p.name}" for p in (ROOT / "models").glob("*.pt"))
    for entry in listed:
        assert check_hash(ROOT / entry["path"], entry["hash_val"], entry["hash_type"]), f"{entry['path']} changed"


def test_monai_labels_generic_bundle_app_offers_the_mapping_network_first():
    # MONAI Label's monaibundle app offers models/*.pt as the network's weights, shortest name first, and loads the
    # first with strict=False: a shorter name than model.pt (the bank was bank.pt) was silently loaded as the weights
    offered = sorted((p.name for p in (ROOT / "models").glob("*.pt")), key=len)
    assert offered[0] == "model.pt"


def test_shipped_files_are_under_the_model_zoo_limit_and_load_weights_only():
    for path in (ROOT / "models").iterdir():
        assert path.stat().st_size < 25 * 1024 * 1024, path
        torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # Warp's shape checks become constants: 64 x 64 only
# TorchScript is deprecated in the pinned torch, and MONAI's ckpt_export is TorchScript: the zoo's export path
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
def test_ckpt_export_traces_network_def_to_torchscript_that_maps_like_the_checkpoint(tmp_path):
    from monai.bundle import ckpt_export

    from bundle.checkpoint import load_weights
    from bundle.networks import DiffeoMappingNet

    # traced, not scripted: torch.jit.script fails to compile MONAI's Warp (f-string error messages in its forward)
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ROOT / "models" / "model.pt"),
                meta_file=str(ROOT / "configs" / "metadata.json"), config_file=str(ROOT / "configs" / "inference.yaml"),
                bundle_root=str(ROOT), key_in_ckpt="model", use_trace=True, input_shape=[1, 6, 64, 64])
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    network = load_weights(DiffeoMappingNet(3, backbone="voxelmorph"), ROOT / "models" / "model.pt").eval()
    pairs = torch.rand(5, 6, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(pairs)
    assert expected.abs().max() > 0.1  # the shipped field is not the identity, so agreement means something
    assert torch.allclose(exported(pairs), expected, atol=1e-5)


def selftrain_config(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / name) for name in ("inference.yaml", "selftrain.yaml")])
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')", **overrides})
    return parser


def test_the_shipped_student_was_made_with_the_selftrain_configs_defaults():
    from bundle import selftrain
    from bundle.checkpoint import recipe_of
    from bundle.student import SLOPE

    config = selftrain_config()
    expected = {"rounds": config["rounds"], "iterations": config["iterations"], "seed": config["seed"],
                "agreement": selftrain.AGREEMENT, "margin": selftrain.MARGIN, "bank_ring": selftrain.BANK_RING,
                "outline": selftrain.OUTLINE, "slope": SLOPE, "touching": selftrain.TOUCHING}
    assert recipe_of(ROOT / "models" / "student.pt") == expected


@pytest.mark.slow
def test_selftraining_writes_a_student_the_workflow_then_detects_with(tiny_dataset, tmp_path):
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank
    from bundle.checkpoint import read_checkpoint

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    out = tmp_path / "student.pt"
    workflow = ConfigWorkflow(config_file=[str(ROOT / "configs" / n) for n in ("inference.yaml", "selftrain.yaml")],
                              workflow_type=None, bundle_root=str(ROOT), dataset_dir=str(tiny_dataset),
                              bank_path=str(bank), student_out=str(out), iterations=3, rounds=2,
                              device="$torch.device('cpu')")
    workflow.initialize()
    workflow.run()
    stored = read_checkpoint(out)
    assert [r["round"] for r in stored["history"]] == [1, 2]
    assert stored["history"][0]["bank_cells"] > 0 and stored["recipe"]["iterations"] == 3

    parser = selftrain_config(bank_path=str(bank), student_path=str(out))
    parser["inferer#student"] = "@student"
    inferer = parser.get_parsed_content("inferer")
    image = torch.rand(3, 160, 200)
    annotation = inferer.annotate(image, parser.get_parsed_content("network"))
    assert annotation.labels.shape == (160, 200)
    assert all(0 <= u <= 1 for u in annotation.cells["uncertainty"])


def test_the_multi_gpu_inference_overlay_keeps_every_initialize_step_of_the_inference_config():
    base, overlay = ConfigParser(), ConfigParser()
    base.read_config(str(ROOT / "configs" / "inference.yaml"))
    overlay.read_config([str(ROOT / "configs" / name) for name in ("inference.yaml", "multi_gpu_inference.yaml")])
    steps = [step if isinstance(step, str) else step["_target_"] for step in overlay["initialize"]]
    for step in base["initialize"]:
        assert (step if isinstance(step, str) else step["_target_"]) in steps, step
    assert overlay["dataloader#dataset"] == "@dataset"  # the overlay changes keys, not the whole section


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_exactly_the_outputs_of_one_process(tiny_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(ROOT), "--dataset_dir", str(tiny_dataset)]
    one = subprocess.run(run + ["--config_file", str(ROOT / "configs" / "inference.yaml"),
                                "--output_dir", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    configs = str([str(ROOT / "configs" / name) for name in ("inference.yaml", "multi_gpu_inference.yaml")])
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                          "--nproc_per_node=2"] + run[1:] + ["--config_file", configs, "--output_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]

    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len([f for f in files if f.endswith("_labels.tif")]) == 4  # every image once, by one rank or the other
    for name in files:
        if name.endswith((".tif", ".csv", ".geojson")):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
