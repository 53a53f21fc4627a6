"""Training across nodes: two torchrun agents (one process each, as two machines would run them) meet through
c10d rendezvous over loopback and train with gloo; they reach the parameters one process reaches on the same
global batch, with the eager step and with the graph-ready one (train.cuda_graph: true, eager on CPU). No
Mixup here: it mixes each clip with its batch flipped, so per-node batches mix other pairs than one global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from internvideo_fast.data import make_sample_dataset
from internvideo_fast.train.config import load_config
from internvideo_fast.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
AGENT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    make_sample_dataset(root, num_classes=2, clips_per_class=4, val_per_class=1, num_frames=8, size=(32, 32))
    return root


def _config(sample_data, output_dir: Path, batch_size: int, cuda_graph: bool) -> Path:
    config = {
        "recipe": "finetune", "model": "videomae_vit_micro_patch16",
        "model_args": {"img_size": 32, "num_frames": 4, "num_classes": 2},
        "data": {"train_list": str(sample_data / "train.txt"), "root": str(sample_data), "num_frames": 4,
                 "stride": 2, "img_size": 32, "batch_size": batch_size, "num_workers": 0},
        "optim": {"base_lr": 0.05, "warmup_steps": 1, "clip_grad": 1.0},
        "train": {"epochs": 1, "max_steps": 2, "log_every": 1, "output_dir": str(output_dir),
                  "tensorboard": False, "cuda_graph": cuda_graph, "label_smoothing": 0.1},
    }
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph-ready"])
def test_two_agents_over_c10d_rendezvous_equal_one_process(sample_data, tmp_path, cuda_graph):
    train(load_config(_config(sample_data, tmp_path / "one", 4, cuda_graph)), device="cpu")

    config = _config(sample_data, tmp_path / "two", 2, cuda_graph)  # 2 clips per node x 2 nodes
    endpoint = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "ivf-multinode",
         "--local-addr", "127.0.0.1", "--max-restarts", "0",
         "-m", "internvideo_fast.train", "--config", str(config), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    ) for _ in range(2)]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=AGENT_TIMEOUT_S)[0])
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()
    for agent, output in zip(agents, outputs):
        assert agent.returncode == 0, output[-4000:]

    one = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pth", weights_only=True)
    assert two["step"] == one["step"] == 2 and len(two["rng"]) == 2  # both nodes' generators kept
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert any(not torch.equal(value, torch.zeros_like(value)) for value in one["model"].values())
