"""internvideo_fast.layers: the shared blocks and constants, and drop path's math."""

import subprocess
import sys

import pytest
import torch

import internvideo_fast.layers as layers
from internvideo_fast.layers import drop_path, drop_path_scale


def test_every_listed_name_loads_and_unknown_names_raise():
    for name in layers.__all__:
        assert getattr(layers, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_layer"):
        layers.no_such_layer  # noqa: B018


def test_constants_load_without_the_ops():
    """The data pipeline imports the normalization constants; that must not load the fused ops."""
    code = ("import sys, internvideo_fast.layers.constants as c; "
            "assert c.IMAGENET_MEAN == (0.485, 0.456, 0.406); "
            "print('internvideo_fast.ops' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("drop_prob", [0.25, 0.5])
def test_drop_path_zeroes_or_rescales_whole_samples(drop_prob):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 5, dtype=torch.float64)
    assert drop_path(x, drop_prob, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    y = drop_path(x, drop_prob, training=True)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(kept.sum()) < 64
    torch.testing.assert_close(y[kept], x[kept] / (1 - drop_prob))


def test_drop_path_scale_is_zero_or_the_inverse_keep_rate():
    torch.manual_seed(0)
    assert drop_path_scale(8, 0.3, False, "cpu", torch.float32) is None
    assert drop_path_scale(8, 0.0, True, "cpu", torch.float32) is None
    scale = drop_path_scale(256, 0.3, True, "cpu", torch.float64)
    assert scale.shape == (256,)
    assert set(scale.tolist()) == {0.0, 1 / 0.7}
