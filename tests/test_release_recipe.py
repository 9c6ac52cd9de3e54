"""The released recipe as default (issue 12): BatchNorm and SyncBatchNorm, warm-up, boxes leaving the
image, unclipped outputs, baselines' 300 detections, and drmm 0.1's behaviour still selectable."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import run_cli, tiny_batch, tiny_config
from helpers_golden import golden_config

from drmm import build_detector
from drmm.config import LEGACY_VALUES, Config, load_config, packaged_config, save_config, with_legacy_values
from drmm.data import generate_synthetic
from drmm.engine.distributed import sync_batchnorm
from drmm.engine.schedule import lr_factor
from drmm.engine.train import DataPaths, train
from drmm.checkpoints import load_checkpoint

PAPER = ["drmm_r50.yaml", "drmm_r101.yaml", "drmm_swin_t.yaml", "drmm_adamixer_r50.yaml",
         "drmm_adamixer_r101.yaml", "drmm_adamixer_swin_t.yaml"]


def r18_config(norm: str) -> Config:
    return tiny_config(backbone="resnet18", backbone_norm=norm, neck_channels=64, hidden_dim=64, min_size=64,
                       max_size=64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- parameter count, configs, warm-up ------------------------------------------------------

def test_info_reports_the_authors_parameter_count():
    code, out, _ = run_cli("info", packaged_config("drmm_r50.yaml"))
    assert code == 0 and "parameters: 106350598 (106.4M)" in out  # the authors' count: every BN affine is trained


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_select_the_released_behaviour(name):
    cfg = load_config(packaged_config(name))
    m, t = cfg.model, cfg.train
    if m.backbone.startswith("resnet"):
        assert m.backbone_norm == "bn" and t.sync_bn
    assert (m.pooler_aligned, m.clip_stage_boxes, m.topk_mode, m.channel_mapper_bias) == (True, False, "released", True)
    assert not cfg.objective.detach_floor
    assert (t.warmup_iters, t.warmup_factor) == (500, 0.001)


def test_defaults_are_the_released_behaviour():
    cfg = Config()
    m = cfg.model
    assert (m.backbone_norm, m.pooler_aligned, m.clip_stage_boxes, m.topk_mode, m.channel_mapper_bias) == (
        "bn", True, False, "released", True)
    assert not cfg.objective.detach_floor and m.clip_detections
    assert (cfg.train.warmup_iters, cfg.train.warmup_factor) == (500, 0.001)


def test_released_warm_up_is_linear_from_a_thousandth():
    t = Config().train
    t.lr_steps = []
    assert lr_factor(0, t, 100) == pytest.approx(0.001)
    assert lr_factor(250, t, 100) == pytest.approx(0.001 + 0.999 * 0.5)  # MMDetection: 1 - (1 - i/500)(1 - 0.001)
    assert lr_factor(499, t, 100) == pytest.approx(1 - 0.999 / 500)
    assert lr_factor(500, t, 100) == 1.0


@pytest.mark.parametrize("name", ["sparse_rcnn_r50.yaml", "adamixer_r50.yaml"])
def test_baselines_keep_300_detections(name):
    cfg = load_config(packaged_config(name))
    assert cfg.model.detections_per_image == 300 and cfg.model.backbone_norm == "bn_eval"
    small = tiny_config(num_proposals=120, detections_per_image=cfg.model.detections_per_image)
    small.objective.name = "hungarian"
    with torch.inference_mode():
        dets = build_detector(small).eval()(tiny_batch()[0])
    assert [len(d["scores"]) for d in dets] == [300, 300]  # 120 proposals x 3 classes = 360 pairs


def test_golden_config_selects_every_legacy_value():
    cfg = golden_config("sparse_rcnn_drmm")
    for section, values in LEGACY_VALUES.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)


def test_checkpoint_configs_without_the_new_keys_get_drmm_0_1_behaviour():
    old = Config().to_dict()
    for section, values in LEGACY_VALUES.items():
        for key in values:
            del old[section][key]
    cfg = Config.from_dict(with_legacy_values(old))
    assert cfg.model.backbone_norm == "frozen" and cfg.objective.detach_floor and cfg.model.clip_stage_boxes
    new = Config.from_dict(with_legacy_values(Config().to_dict()))  # present keys are kept
    assert new == Config()


def test_resuming_a_drmm_0_1_run_keeps_its_behaviour(tmp_path):
    """A run folder's config.yaml lacks the new keys: --resume reads it with drmm 0.1's values."""
    import yaml

    old = Config().to_dict()
    for section, values in LEGACY_VALUES.items():
        for key in values:
            del old[section][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "config.yaml", written_by_drmm=True).model.backbone_norm == "frozen"
    assert load_config(tmp_path / "config.yaml").model.backbone_norm == "bn"  # a user's YAML: today's defaults


@pytest.mark.parametrize("name", ["demo.yaml", "demo_cpu.yaml", "demo_cpu_adamixer.yaml"])
def test_demo_recipes_keep_drmm_0_1_behaviour(name):
    """Every drmm 0.1 value selected explicitly: the numbers measured with them stay valid."""
    cfg = load_config(packaged_config(name))
    for section, values in LEGACY_VALUES.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)
    assert (cfg.train.warmup_iters, cfg.train.warmup_factor) == (100, 0.01)


# --- BatchNorm: batch statistics, frozen stages, SyncBatchNorm -------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, 8, 2, seed=0, image_size=64, progress=False)
    return root


def small_train_cfg(norm: str) -> Config:
    cfg = r18_config(norm)
    cfg.model.num_classes = 5
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters, t.lr_steps, t.lr_steps_unit = 1e-3, 2, 2, 1, [], "iter"
    t.num_workers, t.log_interval, t.eval_interval, t.checkpoint_interval, t.interval_unit = 0, 1, 0, 0, "iter"
    cfg.data.crop, cfg.data.scale = False, 0.1
    return cfg


@pytest.mark.parametrize("norm", ["bn", "bn_eval"])
def test_running_statistics_change_in_training_only_in_the_trained_stages(synth, tmp_path, norm):
    cfg = small_train_cfg(norm)
    torch.manual_seed(cfg.train.seed)  # the trainer builds its model after this seed: the same initial state
    start = build_detector(cfg).state_dict()
    train(cfg, DataPaths.from_dir(synth), tmp_path / "run", progress=False)
    end = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    body = "backbone.body."
    for key in (k for k in start if k.startswith(body) and k.endswith("running_mean")):
        changed = not torch.equal(start[key], end[key])
        frozen_stage = key[len(body):].startswith(("bn1.", "layer1."))
        assert changed == (norm == "bn" and not frozen_stage), key
        steps = int(end[key.replace("running_mean", "num_batches_tracked")])
        assert steps == (2 if changed else 0), key


def _sync_bn_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        report = {}
        torch.manual_seed(0)
        model = build_detector(r18_config("bn"))
        params = dict(model.named_parameters())
        images = tiny_batch()[0]
        with torch.inference_mode():
            ref = model.eval()(images)
        model, report["converted"] = sync_batchnorm(model)
        model.train()
        norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)}
        report["plain_left"] = sum(type(m) is torch.nn.BatchNorm2d for m in model.modules())
        report["training"] = {n: m.training for n, m in norms.items()}
        report["requires_grad"] = {n: m.weight.requires_grad for n, m in norms.items()}
        report["same_parameters"] = all(p is params[n] for n, p in model.named_parameters())
        with torch.inference_mode():  # eval mode needs no synchronisation: same detections
            dets = model.eval()(images)
        report["same_detections"] = all(torch.allclose(a["scores"], b["scores"]) for a, b in zip(dets, ref))
        try:
            torch.nn.parallel.DistributedDataParallel(model)
            report["ddp_on_cpu"] = "accepted"
        except ValueError as e:
            report["ddp_on_cpu"] = str(e)
        torch.save(report, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_bn_converts_every_batchnorm_in_two_gloo_processes(tmp_path):
    """What ``train.sync_bn`` does, in 2 gloo processes: every norm converted, frozen stages in eval mode.

    torch runs SyncBatchNorm under DDP on GPUs only (DDP refuses it for CPU modules), so the
    synchronised training step itself cannot run on these CPUs; the trainer says so (next test).
    """
    mp.spawn(_sync_bn_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["converted"] == 20 and r["plain_left"] == 0 and r["same_parameters"]  # all of ResNet-18's norms
        for name, training in r["training"].items():
            frozen = name.startswith(("backbone.body.bn1", "backbone.body.layer1."))
            assert training == (not frozen), name  # stem and layer1 stay in eval mode when the model trains
            assert r["requires_grad"][name] == (not frozen), name
        assert r["same_detections"]
        assert r["ddp_on_cpu"] != "accepted", "torch now runs SyncBatchNorm on CPUs: test the training step here"


def test_trainer_sync_bn_on_cpus_is_a_clear_error(synth, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cfg = small_train_cfg("bn")
    cfg.train.sync_bn, cfg.train.batch_size, cfg.train.max_iters = True, 1, 1
    save_config(cfg, tmp_path / "cfg.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "drmm", "train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(synth),
           "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0 and "train.sync_bn needs GPUs" in r.stderr


def test_resized_sizes_round_halves_up_as_mmcv():
    """301 x 0.5 = 150.5: MMDetection's resize gives 151 (int(x + 0.5)); Python's round() would give 150."""
    transform = build_detector(tiny_config(min_size=100, max_size=1333)).transform.eval()
    _, sizes, _ = transform([torch.rand(3, 200, 301)])
    assert sizes == [(100, 151)]


# --- boxes leaving the image, swapped corners, unclipped outputs ----------------------------

@pytest.mark.parametrize("arch,pooler", [("sparse_rcnn", "torchvision"), ("sparse_rcnn", "grid"),
                                         ("adamixer", None)])
def test_swapped_and_out_of_image_boxes_train_and_infer_without_nan(arch, pooler):
    cfg = tiny_config(architecture=arch, pooler=pooler or "torchvision", num_stages=3)
    if arch == "adamixer":
        cfg.model.num_reg_layers, cfg.model.sampling_points, cfg.model.mixing_out_points = 1, 4, 8
    model = build_detector(cfg).train()
    with torch.no_grad():  # normalised cx, cy, w, h: negative sizes swap the corners; centres outside the image
        w = model.proposals.boxes.weight
        w[0::4] = torch.tensor([0.5, 0.5, -0.4, -0.3])  # both corners swapped
        w[1::4] = torch.tensor([0.3, 0.6, 0.2, -0.5])  # y swapped
        w[2::4] = torch.tensor([-0.5, 1.8, 0.3, 0.3])  # outside the image
        w[3::4] = torch.tensor([0.5, 0.5, 4.0, 0.001])  # far wider than the image, thinner than a pixel
    images, targets = tiny_batch()
    losses, trace = model(images, targets, return_stages=True)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(torch.isfinite(s.boxes).all() for s in trace.stages)
    with torch.inference_mode():
        dets = model.eval()(images)
    assert all(torch.isfinite(d["boxes"]).all() and torch.isfinite(d["scores"]).all() for d in dets)


def test_clip_detections_off_keeps_the_boxes_as_predicted():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        model.proposals.boxes.weight[:] = torch.tensor([0.5, 0.5, 1.6, 1.4])  # every box past the image
    images = tiny_batch()[0]
    with torch.inference_mode():
        clipped = model(images)
        model.postprocess.clip = False
        raw, trace = model(images, return_stages=True)
    for i, (c, r, img) in enumerate(zip(clipped, raw, images)):
        h, w = img.shape[-2:]
        assert (c["boxes"][:, 0::2] >= 0).all() and (c["boxes"][:, 0::2] <= w).all()
        assert (r["boxes"][:, 0] < 0).any() and (r["boxes"][:, 2] > w).any()
        (rh, rw) = trace.image_sizes[i]
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
        torch.testing.assert_close(r["boxes"], trace.stages[-1].boxes[i, trace.components[i]] * scale)


def test_clip_stage_boxes_is_selectable():
    cfg = tiny_config(num_stages=2)
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        model.proposals.boxes.weight[:] = torch.tensor([0.5, 0.5, 1.6, 1.4])
    images = tiny_batch()[0]
    with torch.inference_mode():
        released = model(images, return_stages=True)[1]
        model.decoder.clip_boxes = True
        clipped = model(images, return_stages=True)[1]
    torch.testing.assert_close(released.stages[1].proposals, released.stages[0].boxes)  # as they are
    sizes = clipped.image_sizes
    for b, (h, w) in enumerate(sizes):
        p = clipped.stages[1].proposals[b]
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= w).all() and (p[:, 1] >= 0).all() and (p[:, 3] <= h).all()
    assert not torch.equal(released.stages[1].proposals, clipped.stages[1].proposals)


def test_channel_mapper_bias():
    from drmm.models.backbone import ChannelMapper

    assert all(c.bias is not None and not c.bias.any() for c in ChannelMapper([8, 16], 64).convs)
    assert all(c.bias is None for c in ChannelMapper([8, 16], 64, bias=False).convs)
    code, out, _ = run_cli("info", packaged_config("drmm_adamixer_r50.yaml"))
    assert code == 0 and "parameters: 134850614" in out  # drmm 0.1's 134,796,470 + 53,120 BN affine + 4 x 256 biases
