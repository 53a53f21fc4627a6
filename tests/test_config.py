"""The training config schema: unknown keys, wrong types and impossible values are errors naming the key and
where the value came from; the resolved config covers every key and reads back from its own YAML."""

import dataclasses
from pathlib import Path

import pytest

from internvideo_fast.data import DataConfig
from internvideo_fast.errors import ConfigError
from internvideo_fast.train.config import DEFAULTS, RECIPES, load_config, to_yaml, valid_keys, validate_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("override, suggestion", [
    ("pretrianed=weights.pth", "did you mean pretrained?"),
    ("train.epochss=2", "did you mean train.epochs?"),
    ("optim.baselr=1", "did you mean optim.base_lr?"),
    ("train.batch_size=4", "did you mean data.batch_size?"),  # the right name in another section
    ("trian.epochs=2", "did you mean train?"),
    ("data.num_frame=8", "did you mean data.num_frames?"),
])
def test_an_unknown_key_names_itself_and_the_closest_valid_key(override, suggestion):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert suggestion in message and override.split("=")[0].split(".")[0] in message
    assert f"override {override}" in message


def test_an_unknown_key_in_a_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: finetune\noptim:\n  base_lr: 0.1\n  wieght_decay: 0.01\n")
    with pytest.raises(ConfigError, match=r"optim\.wieght_decay \(.*run\.yaml, line 4\): did you mean optim\.weight_decay"):
        load_config(path)


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("optim.layer_decay=0", "optim.layer_decay must be in (0, 1], got 0"),
    ("optim.layer_decay=1.5", "optim.layer_decay must be in (0, 1], got 1.5"),
    ("train.mask_ratio=0", "train.mask_ratio must be in (0, 1), got 0"),
    ("train.mask_ratio=1.0", "train.mask_ratio must be in (0, 1), got 1.0"),
    ("train.precision=fp8", "train.precision must be one of auto | bf16 | fp16 | fp32, got fp8"),
    ("train.epochs=two", "train.epochs must be an integer, got 'two'"),
    ("train.epochs=2.5", "train.epochs must be an integer, got '2.5'"),
    ("optim.base_lr=fast", "optim.base_lr must be a number, got 'fast'"),
    ("train.tensorboard=3", "train.tensorboard must be true/false"),
    ("optim.betas=[0.9]", "optim.betas must be two numbers in [0, 1)"),
    ("data.test_crops=2", "data.test_crops must be one of 1 | 3, got 2"),
    ("data.normalization=imagnet", "data.normalization must be one of imagenet | clip"),
    ("data.max_text_len=1", "data.max_text_len must be at least 2 (the start and end tokens), got 1"),
    ("data.normalize_on_device=true", "unknown config key data.normalize_on_device"),  # set by ivf-train only
    ("recipe=pretrain", "recipe must be one of " + " | ".join(RECIPES)),
    ("pretrained=true", "hub downloads are not supported"),
    ("train=3", "train is a section"),
    ("model=videomae_vit_bse_patch16", "did you mean videomae_vit_base_patch16?"),
])
def test_wrong_types_and_impossible_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert expected in str(error.value)
    assert f"override {override}" in str(error.value)


def test_a_wrong_value_in_a_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: finetune\ndata:\n  train_list: a.txt\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"data\.batch_size must be >= 1, got 0 \(.*run\.yaml, line 4\)"):
        load_config(path)
    # An override fixes the file's value, and then names itself when wrong.
    assert load_config(path, ["data.batch_size=2"])["data"]["batch_size"] == 2


def test_file_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochs is given twice \(.*twice\.yaml, line 3\)"):
        load_config(twice)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {epochs: 2\n")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["optim.base_lr"])


def test_values_are_converted_and_free_form_mappings_stay_free():
    config = load_config(None, ["optim.base_lr=1", "optim.layer_decay=1", "model_args.anything=[1, 2]",
                                "data.extra={dali_device: cpu}", "train.compile=reduce-overhead"])
    assert config["optim"]["base_lr"] == 1.0 and isinstance(config["optim"]["base_lr"], float)
    assert config["optim"]["layer_decay"] == 1.0
    assert config["model_args"] == {"anything": [1, 2]} and config["data"]["extra"] == {"dali_device": "cpu"}
    assert config["train"]["compile"] == "reduce-overhead"


def test_the_schema_covers_every_key_and_the_data_config():
    config = load_config(None)
    assert set(config) == {"recipe", "model", "model_args", "pretrained", "pretrained_parts", "load", "eval",
                           "data", "optim", "train"}
    set_by_the_loop = {"list_file", "train", "normalize_on_device"}
    data_fields = {spec.name for spec in dataclasses.fields(DataConfig)} - set_by_the_loop
    assert set(config["data"]) == data_fields | {"train_list", "val_list"}
    assert config == DEFAULTS
    assert {"train.keep_checkpoints", "train.overwrite", "train.precision", "optim.layer_decay"} <= set(valid_keys())


def test_the_resolved_config_reads_back_from_its_yaml(tmp_path):
    config = load_config(CONFIGS / "videomae_vit_base_k400_finetune.yaml", ["data.mean=[0.5, 0.5, 0.5]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config


@pytest.mark.parametrize("name", sorted(path.name for path in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_is_valid_and_cites_nothing_outside_the_repository(name):
    text = (CONFIGS / name).read_text()
    assert load_config(CONFIGS / name)["recipe"] in RECIPES
    comments = " ".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    for outside in ("REFERENCE", "/work/", "http", "§"):
        assert outside not in comments, f"{name} cites {outside!r}"


def test_a_config_built_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="unknown config key train.epochss: did you mean train.epochs"):
        validate_config({"train": {"epochss": 1}})
    assert validate_config({"data": {"batch_size": 3}})["data"]["batch_size"] == 3
