"""``run.parallel: fsdp`` for real, on CPU with gloo, on the micro fixture model (LLM decoder layers and vision
layers sharded over 2 processes). One set of launches, shared by the checks:

- fsdp (2 processes, torchrun) vs ddp (2 processes, ``accelerate launch``) vs 1 process: the trainable weights
  after 6 steps (with gradient clipping) agree within 1e-6;
- a two-"node" rendezvous (``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` twice on 127.0.0.1)
  trains the same weights as one node with 2 processes, bitwise; it is SIGKILLed after its first checkpoint,
  and ``--resume auto`` on one node ends bitwise equal to the uninterrupted fsdp run;
- the checkpoint an fsdp run writes (trainable-only, gathered on rank 0) loads into a single-process Chat.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.fixture_utils import FIXTURES, inputs, model_cfg
from tests.train_helpers import (REPO, free_port, run_train, subprocess_env, train_config, train_in_process,
                                 write_align_folder, write_config)

pytestmark = pytest.mark.slow

COMMON = dict(max_epoch=2, iters_per_epoch=3, save_every=2, warmup_steps=1, init_lr=1e-2, min_lr=1e-3,
              max_grad_norm=0.5, tensorboard=False)
FSDP = dict(parallel="fsdp", fsdp_shard_vision=True)


def _config(tmp_path, data, job, **run):
    return write_config(tmp_path / f"{job}.yaml", train_config(data, tmp_path / "out" / job, job_id="job",
                                                                 **COMMON, **run))


def _torchrun(cfg, *launch):
    launch = launch or ("--nproc-per-node", "2", "--master-port", str(free_port()))
    return [sys.executable, "-m", "torch.distributed.run", *launch, str(REPO / "train.py"), "--cfg-path", str(cfg)]


def _accelerate(cfg):
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(free_port()), str(REPO / "train.py"), "--cfg-path", str(cfg)]


def _start(cmd, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    env = dict(subprocess_env(), HF_HOME=str(tmp_path / "hf"))  # accelerate reads no user config
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _finish(proc, log, tmp_path, name, timeout=900):
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return (tmp_path / f"{name}.log").read_text()


def _kill_tree(procs):
    victims = []
    for p in procs:
        try:
            victims += psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]
        except psutil.NoSuchProcess:
            pass
    for v in victims:
        try:
            v.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        p.wait(30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    data = write_align_folder(tmp / "align", n=8)
    cfgs = {"fsdp": _config(tmp, data, "fsdp", batch_size_train=2, **FSDP),
            "ddp": _config(tmp, data, "ddp", batch_size_train=2),
            "nodes": _config(tmp, data, "nodes", batch_size_train=2, **FSDP)}
    logs = {}
    started = {name: _start(cmd, tmp, name) for name, cmd in (("fsdp", _torchrun(cfgs["fsdp"])),
                                                              ("ddp", _accelerate(cfgs["ddp"])))}
    # the 1-process reference (same global batch) runs in this process meanwhile
    assert train_in_process(["--cfg-path", str(_config(tmp, data, "one", batch_size_train=4))]) == 0
    for name, (proc, log) in started.items():
        logs[name] = _finish(proc, log, tmp, name)

    # two "nodes" of one process each meet through a c10d rendezvous; SIGKILLed after the first checkpoint
    port = free_port()
    node = ("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-id", "fsdp-test")
    nodes = [_start(_torchrun(cfgs["nodes"], *node), tmp, f"node{i}") for i in range(2)]
    job = tmp / "out" / "nodes" / "job"
    try:
        deadline = time.time() + 600
        while not (job / "resume.pt").exists() and all(p.poll() is None for p, _ in nodes) \
                and time.time() < deadline:
            time.sleep(0.02)
        assert all(p.poll() is None for p, _ in nodes), "the run ended before it could be killed"
        logs["nodes_step2"] = load_file(str(job / "checkpoint_step2.safetensors"))  # written before resume.pt
    finally:
        _kill_tree([p for p, _ in nodes])
        for _, log in nodes:
            log.close()
    logs["node0"] = (tmp / "node0.log").read_text() + (tmp / "node1.log").read_text()
    assert not (job / "checkpoint_1.safetensors").exists()
    resumed = run_train(["--cfg-path", str(cfgs["nodes"]), "--resume", "auto"], cwd=tmp, nproc=2, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs["resumed"] = resumed.stderr
    return tmp, logs


def _weights(tmp, job, name="checkpoint_1.safetensors"):
    return load_file(str(tmp / "out" / job / "job" / name))


def test_fsdp_ddp_and_one_process_train_the_same_weights(runs):
    tmp, logs = runs
    assert "fsdp: 4 LLM units (decoder layers, embeddings) and 7 vision layers sharded over 2 ranks" in logs["fsdp"]
    assert "rank 0/2" in logs["ddp"] and "fsdp:" not in logs["ddp"]  # launched by accelerate, as DDP
    fsdp, ddp, one = (_weights(tmp, job) for job in ("fsdp", "ddp", "one"))
    assert sorted(fsdp) == sorted(one) == ["llama_proj.bias", "llama_proj.weight"]
    init = torch.load(FIXTURES / "minigpt4_tiny" / "minigpt4_proj.pth", weights_only=True)["model"]
    assert (fsdp["llama_proj.weight"] - init["llama_proj.weight"]).abs().max() > 1e-3  # training moved them
    for key in fsdp:
        assert (fsdp[key] - ddp[key]).abs().max() <= 1e-6, key
        assert (fsdp[key] - one[key]).abs().max() <= 1e-6, key
    # the resume file has the same layout in both modes: full optimizer tensors, not shards
    states = [torch.load(tmp / "out" / job / "job" / "resume.pt", weights_only=True) for job in ("fsdp", "ddp")]
    for s in states:
        assert s["world_size"] == 2 and s["global_step"] == 6 and s["weights_digests"][0] == s["weights_digests"][1]
    moments = [s["optimizer"]["state"][0]["exp_avg"] for s in states]
    assert moments[0].shape == moments[1].shape == fsdp["llama_proj.weight"].shape


def test_two_nodes_match_one_node_and_a_killed_run_resumes_bitwise(runs):
    tmp, logs = runs
    assert "rank 0/2" in logs["node0"] and "fsdp: 4 LLM units" in logs["node0"]
    one_node = _weights(tmp, "fsdp", "checkpoint_step2.safetensors")
    for key, value in logs["nodes_step2"].items():
        assert value.equal(one_node[key]), key
    assert "resumed from" in logs["resumed"]
    full, resumed = _weights(tmp, "fsdp"), _weights(tmp, "nodes")
    assert full.keys() == resumed.keys()
    for key in full:
        assert full[key].equal(resumed[key]), key


def test_an_fsdp_checkpoint_loads_into_a_single_process_chat(runs):
    from minigpt4.conversation import CONV_VISION_Vicuna0, Chat
    from minigpt4.models import MiniGPT4
    from minigpt4.processors import Blip2ImageEvalProcessor

    tmp, _ = runs
    path = tmp / "out" / "fsdp" / "job" / "checkpoint_1.safetensors"
    fx = FIXTURES / "minigpt4_tiny"
    model = MiniGPT4.from_config(model_cfg(fx, ckpt=str(path)))
    assert model.llama_proj.weight.equal(load_file(str(path))["llama_proj.weight"])
    chat = Chat(model, Blip2ImageEvalProcessor(image_size=224), device="cpu")
    conv, img_list = CONV_VISION_Vicuna0.copy(), []
    chat.upload_img(Image.open(fx / inputs(fx)["image_files"][0]).convert("RGB"), conv, img_list)
    chat.ask("Describe this image.", conv)
    text, _ = chat.answer(conv, img_list, do_sample=False, max_new_tokens=8)
    assert isinstance(text, str) and conv.messages[-1][1] == text
