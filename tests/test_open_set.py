"""Evidential (Dirichlet) open-set head: loss terms by hand and against torch.distributions in float64, and the
open_set recipe trained and evaluated end to end on tiny generated features."""

import math

import pytest
import torch

from internvideo_fast.errors import ConfigError, UserError
from internvideo_fast.models.evidential import (
    EvidentialHead, dirichlet_uncertainty, evidence_activation, evidential_loss, kl_to_uniform_dirichlet,
)


def test_uncertainty_and_losses_by_hand():
    no_evidence = torch.zeros(1, 4, dtype=torch.float64)
    assert dirichlet_uncertainty(no_evidence).item() == 1.0
    # alpha = 1: S = K, the log loss is log K, and KL to the uniform Dirichlet is 0
    assert evidential_loss(no_evidence, torch.tensor([2]), kind="log").item() == pytest.approx(math.log(4))
    assert kl_to_uniform_dirichlet(no_evidence + 1).item() == pytest.approx(0.0, abs=1e-12)
    # evidence (2, 0): alpha (3, 1), S 4, u = 2 / 4; log loss of class 0 is log 4 - log 3
    evidence = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    assert dirichlet_uncertainty(evidence).item() == 0.5
    assert evidential_loss(evidence, torch.tensor([0])).item() == pytest.approx(math.log(4 / 3))
    # digamma form: digamma(4) - digamma(3) = 1/3
    assert evidential_loss(evidence, torch.tensor([0]), kind="digamma").item() == pytest.approx(1 / 3)
    # mse form: p = (3/4, 1/4): (1/4)^2 + (1/4)^2 + 2 * (3/16) / 5
    assert evidential_loss(evidence, torch.tensor([0]), kind="mse").item() == pytest.approx(1 / 8 + 3 / 40)
    # the KL term sees only the wrong class's evidence: for label 0, alpha~ = (1, 1) -> 0; for label 1 it is
    # alpha~ = (3, 1)
    assert evidential_loss(evidence, torch.tensor([0]), kl_weight=1.0).item() == pytest.approx(math.log(4 / 3))
    with pytest.raises(ValueError, match="unknown evidential loss"):
        evidential_loss(evidence, torch.tensor([0]), kind="hinge")


def test_kl_matches_torch_distributions_in_float64():
    alpha = torch.rand(5, 7, dtype=torch.float64) * 4 + 0.2
    expected = torch.distributions.kl_divergence(torch.distributions.Dirichlet(alpha),
                                                 torch.distributions.Dirichlet(torch.ones_like(alpha)))
    torch.testing.assert_close(kl_to_uniform_dirichlet(alpha), expected)


def test_loss_gradient_is_finite_and_head_predicts():
    head = EvidentialHead(6, 3, hidden=8).double()
    features = torch.randn(4, 6, dtype=torch.float64)
    loss = evidential_loss(head(features), torch.tensor([0, 1, 2, 0]), kl_weight=0.5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    predicted, uncertainty = head.predict(features)
    assert predicted.shape == (4,) and ((uncertainty > 0) & (uncertainty <= 1)).all()
    assert evidence_activation(torch.tensor([-100.0, 0.0]), "exp").tolist() == pytest.approx([math.exp(-10), 1.0])
    with pytest.raises(ValueError, match="unknown evidence activation"):
        EvidentialHead(6, 3, activation="tanh")


def test_open_set_recipe_end_to_end(tmp_path):
    from internvideo_fast.train.tasks import evaluate_task, train_task
    from internvideo_fast.train.tasks.open_set import make_demo_data

    features, train_list, val_list = make_demo_data(tmp_path, known=3, unknown=2, channels=8,
                                                    train_per_class=12, val_per_class=6, noise=0.5)
    config = {"recipe": "open_set", "model_args": {"hidden": 16},
              "data": {"features": str(features), "train_list": str(train_list), "val_list": str(val_list),
                       "batch_size": 12, "annealing_steps": 20},
              "optim": {"base_lr": 5e-3}, "train": {"epochs": 40, "log_every": 1000, "output_dir": str(tmp_path / "run")}}
    result = train_task(config, "cpu")
    assert result["eval"]["known"] == 18 and result["eval"]["unknown"] == 12
    assert result["eval"]["closed_set_accuracy"] > 0.8 and result["eval"]["auroc"] > 0.7
    again = evaluate_task("open_set", result["checkpoint"], [], "cpu")
    assert again["auroc"] == pytest.approx(result["eval"]["auroc"])
    config["train"] = {**config["train"], "output_dir": str(tmp_path / "errors")}  # a fresh folder: no overwrite
    with pytest.raises(ConfigError, match="data.val_lst"):
        train_task({**config, "data": {**config["data"], "val_lst": "x"}}, "cpu")
    (tmp_path / "bad.txt").write_text("class0_000 0\nmissing_video 1\n")
    with pytest.raises(UserError, match="missing_video.npy: no features"):
        train_task({**config, "data": {**config["data"], "train_list": str(tmp_path / "bad.txt")}}, "cpu")
