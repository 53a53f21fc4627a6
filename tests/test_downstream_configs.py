"""The downstream tasks' shipped configs load and every key in them is one their recipe reads."""

from pathlib import Path

import pytest

from internvideo_fast.train.config import load_config
from internvideo_fast.train.tasks import TASK_RECIPES, task_module
from internvideo_fast.train.tasks.common import task_sections

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _sections(recipe: str, config: dict):
    module = task_module(recipe)
    return task_sections(config, module.DATA_DEFAULTS, module.TRAIN_DEFAULTS, module.OPTIM_DEFAULTS,
                         getattr(module, "MODEL_DEFAULTS", None))


@pytest.mark.parametrize("name, recipe", [("tal_thumos14_actionformer.yaml", "tal"),
                                          ("open_set_evidential.yaml", "open_set"),
                                          ("stal_ava_videomae_b.yaml", "stal"),
                                          ("vqa_msrvtt_internvideo_mm_b16.yaml", "vqa")])
def test_shipped_configs_are_valid(name, recipe):
    config = load_config(CONFIGS / name)
    assert config["recipe"] == recipe in TASK_RECIPES
    sections = _sections(recipe, config)
    assert sections[0]["batch_size"] >= 1


def test_an_unknown_key_is_named():
    from internvideo_fast.errors import ConfigError

    config = load_config(CONFIGS / "open_set_evidential.yaml", ["data.batchsize=3"])
    with pytest.raises(ConfigError, match="data.batchsize: not a key of recipe 'open_set'"):
        _sections("open_set", config)
