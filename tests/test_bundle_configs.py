"""The bundle's configs: metadata that validates against MONAI's schema, configs that parse and build."""

import json
from pathlib import Path

import jsonschema
import pytest
import torch
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


def test_train_invariant_config_builds_its_trainer(tiny_dataset, tmp_path):
    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    parser = ConfigParser.load_config_file(str(ROOT / "configs" / "train_invariant.yaml"))
    config = ConfigParser(parser)
    config.update({"bundle_root": str(ROOT), "bank_path": str(bank), "ckpt_dir": str(tmp_path / "ckpt"),
                   "device": "$torch.device('cpu')"})
    trainer = config.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs == 60
    assert isinstance(config.get_parsed_content("network"), torch.nn.Module)


@pytest.mark.parametrize("train", ["train_invariant.yaml", "train_mapping.yaml"])
def test_the_evaluate_overlay_runs_validation_on_given_weights(tiny_dataset, tmp_path, train):
    from monai.bundle import ConfigWorkflow

    from bundle.bank import build_bank, save_bank

    bank = save_bank(build_bank(tiny_dataset, fraction=1.0, seed=0, progress=False), tmp_path / "bank.pt")
    parser = ConfigParser(ConfigParser.load_config_file(str(ROOT / "configs" / train)))
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, tmp_path / "weights.pt")
    workflow = ConfigWorkflow(
        config_file=[str(ROOT / "configs" / train), str(ROOT / "configs" / "evaluate.yaml")], workflow_type=None,
        bundle_root=str(ROOT), bank_path=str(bank), ckpt_dir=str(tmp_path / "eval"), checkpoint=str(tmp_path / "weights.pt"),
        device="$torch.device('cpu')")
    workflow.initialize()
    workflow.run()
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert len(metrics) >= 1 and all(0.0 <= float(v) <= 1.0 for v in metrics.values())
    assert (tmp_path / "eval" / "metrics.csv").is_file()


def test_the_multi_gpu_overlay_merges_over_a_training_config():
    parser = ConfigParser(ConfigParser.load_config_file(str(ROOT / "configs" / "train_invariant.yaml")))
    parser.read_config([str(ROOT / "configs" / "train_invariant.yaml"), str(ROOT / "configs" / "multi_gpu_train.yaml")])
    assert parser["network"]["_target_"].endswith("DistributedDataParallel")
    assert parser["train#dataloader#sampler"] == "@train#sampler"
    assert parser["train#dataloader#dataset"] == "@train#dataset"  # the overlay changes keys, not the whole section


def test_network_def_passes_the_model_zoo_shape_check():
    from monai.bundle import verify_net_in_out

    # one tensor cat([archetype, cell]) in, one displacement field out, as metadata.json declares
    verify_net_in_out(net_id="network_def", meta_file=str(ROOT / "configs" / "metadata.json"),
                      config_file=str(ROOT / "configs" / "inference.yaml"), bundle_root=str(ROOT), device="cpu")


def test_shipped_files_are_under_the_model_zoo_limit_and_load_weights_only():
    for path in (ROOT / "models").iterdir():
        assert path.stat().st_size < 25 * 1024 * 1024, path
        torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # Warp's shape checks become constants: 64 x 64 only
def test_ckpt_export_traces_network_def_to_torchscript_that_maps_like_the_checkpoint(tmp_path):
    from monai.bundle import ckpt_export

    from bundle.annotate import load_weights
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
