"""Training: outputs of a run, exact resume, non-finite handling, schedule, DDP equivalence."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from PIL import Image

from drmm.config import load_config, save_config
from drmm.data import generate_synthetic
from drmm.engine.runlog import cut_log
from drmm.engine.sampling import EpochBatchSampler, SeededSamples
from drmm.engine.schedule import lr_factor
from drmm.engine.train import DataPaths, Trainer, train
from drmm.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, 16, 4, seed=0, image_size=64, progress=False)
    return root


def small_cfg(**train):
    cfg = tiny_config(num_classes=5, min_size=64, max_size=64)
    t = cfg.train
    t.lr, t.batch_size, t.max_iters, t.warmup_iters = 1e-3, 2, 4, 2
    t.lr_steps, t.lr_steps_unit, t.num_workers, t.log_interval = [3], "iter", 0, 1
    t.eval_interval, t.checkpoint_interval, t.interval_unit = 0, 0, "iter"
    cfg.data.crop = True
    cfg.data.scale = 0.1
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def test_run_writes_everything(synth, tmp_path):
    out = tmp_path / "run"
    result = train(small_cfg(eval_interval=2), DataPaths.from_dir(synth), out, progress=False)
    assert result["step"] == 4
    for name in ("config.yaml", "log.jsonl", "loss.png", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"nll.0", "mcm.0", "nll.1", "mcm.1", "loss", "lr", "grad_norm"} <= set(train_rows[0])
    val_rows = [r for r in rows if r["type"] == "val"]
    assert [r["step"] for r in val_rows] == [2, 4] and 0 <= val_rows[-1]["AP"] <= 1
    ckpt = load_checkpoint(out / "last.pt")  # weights_only=True inside
    assert ckpt["step"] == 4 and ckpt["class_names"] == ["circle", "square", "triangle", "cross", "ring"]
    assert ckpt["cat_ids"] == [1, 2, 3, 4, 5] and "optimizer" in ckpt and "rng" in ckpt
    assert load_config(out / "config.yaml").model.num_classes == 5
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries


def test_resume_is_exact(synth, tmp_path):
    cfg = small_cfg(max_iters=8, checkpoint_interval=3, num_workers=1)
    cfg.model.train_min_sizes = [48, 64, 80]  # model-side randomness must resume too
    straight = train(cfg, DataPaths.from_dir(synth), tmp_path / "a", progress=False)
    cfg4 = small_cfg(max_iters=4, checkpoint_interval=3, num_workers=0)  # workers don't matter
    cfg4.model.train_min_sizes = [48, 64, 80]
    train(cfg4, DataPaths.from_dir(synth), tmp_path / "b", progress=False)
    resumed_cfg = load_config(tmp_path / "b" / "config.yaml", ["train.max_iters=8"])
    resumed = train(resumed_cfg, DataPaths.from_dir(synth), tmp_path / "b", resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 8
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = lambda d: [r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())
                        if r["type"] == "train"]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def _logged_steps(log: Path, kind: str = "train") -> list[int]:
    rows = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return [r["step"] for r in rows if r["type"] == kind]


def test_cut_log_keeps_rows_up_to_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [{"type": "train", "step": 1, "loss": 2.5}, {"type": "train", "step": 2, "loss": 2.0},
            {"type": "val", "step": 2, "AP": 0.1}, {"type": "train", "step": 3, "loss": 1.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    log.write_text(text + '{"type": "train", "st')  # the last line cut short by a kill
    assert cut_log(log, 2) == (rows[:3], 2)
    assert log.read_text() == "".join(json.dumps(r) + "\n" for r in rows[:3])
    assert cut_log(log, 5) == (rows[:3], 0) and cut_log(tmp_path / "none.jsonl", 5) == ([], 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_resume_after_a_kill_logs_each_step_once(synth, tmp_path):
    """`drmm train` killed (SIGKILL) between two checkpoints, then resumed: no step is logged twice."""
    cfg = small_cfg(max_iters=200, checkpoint_interval=10, eval_interval=10)
    save_config(cfg, tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "drmm", "train", "--config", tmp_path / "cfg.yaml", "--data", synth, "--out", run,
           "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ((run / "last.pt").is_file() and _logged_steps(run / "log.jsonl")[-1:] in ([13], [14], [15])):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert load_checkpoint(run / "last.pt")["step"] == 10
    assert _logged_steps(run / "log.jsonl")[-1] > 10 and _logged_steps(run / "log.jsonl", "val") == [10]
    (run / "loss.png").write_text("a stale plot")

    resumed = Trainer(load_config(run / "config.yaml", ["train.max_iters=16"]), DataPaths.from_dir(synth), run,
                      resume=True, progress=False)
    assert _logged_steps(run / "log.jsonl") == list(range(1, 11))  # cut back to the checkpoint on resume
    with Image.open(run / "loss.png") as png:  # and the plot redrawn from it
        assert png.format == "PNG"
    resumed.fit()
    assert _logged_steps(run / "log.jsonl") == list(range(1, 17))
    assert _logged_steps(run / "log.jsonl", "val") == [10, 16]
    Trainer(load_config(run / "config.yaml"), DataPaths.from_dir(synth), run, resume=True, progress=False).fit()
    assert _logged_steps(run / "log.jsonl", "val") == [10, 16]  # a finished run resumed: its last row not again


def test_nonfinite_steps_are_skipped_then_stop(synth, tmp_path, monkeypatch):
    cfg = small_cfg(max_iters=6, max_consecutive_nonfinite=3)
    trainer = Trainer(cfg, DataPaths.from_dir(synth), tmp_path / "run", progress=False)
    real = trainer.model.objective.forward
    calls = {"n": 0}

    def flaky(stages, targets, *args):
        calls["n"] += 1
        losses = real(stages, targets, *args)
        if calls["n"] in (2, 3):
            losses["nll.0"] = losses["nll.0"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.model.objective, "forward", flaky)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    assert result["nonfinite_steps"] == 2 and result["step"] == 6
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    trainer = Trainer(cfg, DataPaths.from_dir(synth), tmp_path / "run2", progress=False)
    monkeypatch.setattr(trainer.model.objective, "forward", lambda *a: {"nll.0": torch.tensor(float("inf"))})
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        trainer.fit()


def test_schedule_and_sampler():
    cfg = small_cfg(warmup_iters=10, warmup_factor=0.1, lr_steps=[2, 3], lr_steps_unit="epoch", lr_gamma=0.1)
    assert lr_factor(0, cfg.train, 100) == pytest.approx(0.1)
    assert lr_factor(5, cfg.train, 100) == pytest.approx(0.55)
    assert lr_factor(150, cfg.train, 100) == 1.0
    assert lr_factor(200, cfg.train, 100) == pytest.approx(0.1)
    assert lr_factor(399, cfg.train, 100) == pytest.approx(0.01)
    single = EpochBatchSampler(10, 4, seed=3)
    ranks = [EpochBatchSampler(10, 2, seed=3, rank=r, world=2) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(1)
    merged = [a + b for a, b in zip(*ranks)]
    assert merged == list(single) and len(single) == 2
    single.set_epoch(1, start_batch=1)
    assert list(single) == merged[1:]
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(3, 4, seed=0)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations/train.json"):
        DataPaths.from_dir(tmp_path)


def _grad_norms(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["grad_norm"] for r in rows if r["type"] == "train"]


def test_ddp_two_gloo_processes_match_one_process(synth, tmp_path):
    """2 processes x batch 1 (gloo, CPU) == 1 process x batch 2: same gradients, same weights.

    The weights alone cannot show a wrong gradient scale (AdamW is invariant to it),
    so the gradient norms logged at each step (before clipping) are compared too:
    the loss sums over ground truths and DDP averages gradients, so without the
    world-size factor the 2-process norm would be half the single-process one.
    """
    cfg = small_cfg(max_iters=3, batch_size=1)
    cfg.model.backbone = "resnet18"  # frozen BatchNorm: no batch statistics, so 2 x 1 image == 1 x 2 images
    cfg.model.backbone_norm = "frozen"
    cfg.data.crop = cfg.data.flip = False
    save_config(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "drmm", "train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(synth),
           "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    one = small_cfg(max_iters=3, batch_size=2)
    one.model.backbone, one.model.backbone_norm = "resnet18", "frozen"
    one.data.crop = one.data.flip = False
    torch.set_num_threads(2)  # the bounds below were measured with two threads (one thread sums otherwise)
    train(one, DataPaths.from_dir(synth), tmp_path / "single", progress=False)
    a = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    # Adam turns float-rounding differences of near-zero gradients into visible (but
    # tiny) update differences, so compare against the size of one update (lr = 1e-3):
    # within a tenth of it everywhere but a few elements (with one compute thread instead of
    # two, 6 of 589824 weights of a conv ended up to 5.2e-4 apart: 1e-5 of them), and never
    # more than the three updates of the run.
    lr = one.train.lr
    for k in a:
        if a[k].is_floating_point():
            d = (a[k].double() - b[k].double()).abs()
            apart = int((d > 0.1 * lr).sum())
            assert d.max() <= 3 * lr and apart <= max(2, 1e-4 * d.numel()), (k, float(d.max()), apart)
        else:
            assert torch.equal(a[k], b[k]), k
    diff = sum(((a[k] - b[k]).double() ** 2).sum() for k in a if a[k].is_floating_point()) ** 0.5
    assert diff < 1e-3
    ddp_norms, single_norms = _grad_norms(tmp_path / "ddp"), _grad_norms(tmp_path / "single")
    assert len(ddp_norms) == len(single_norms) == 3 and min(single_norms) > 1.0  # not a vanishing gradient
    assert ddp_norms == pytest.approx(single_norms, rel=1e-4)


def test_bf16_autocast_training_step_is_finite(synth, tmp_path):
    result = train(small_cfg(max_iters=2, amp="bf16"), DataPaths.from_dir(synth), tmp_path / "bf16", progress=False,
                   force_amp=True)  # bf16 itself, emulated where the CPU lacks it
    assert result["nonfinite_steps"] == 0
    rows = [json.loads(l) for l in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["type"] == "train")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Trainer(small_cfg(amp="fp16"), DataPaths.from_dir(synth), tmp_path / "fp16", device="cpu", progress=False)


@pytest.mark.parametrize("name", ["demo.yaml", "demo_cpu.yaml"])
def test_demo_recipe_builds_and_steps(name):
    from drmm.config import packaged_config
    from drmm.models import build_detector

    cfg = load_config(packaged_config(name))
    assert cfg.model.delta_mode == "relative"
    model = build_detector(cfg)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.amp == "bf16"):
        loss = sum(model(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)



def test_persistent_workers_give_the_same_batches_across_epochs(synth, tmp_path):
    """One DataLoader whose workers outlive epochs == each epoch's samples drawn afresh in this process."""
    cfg = small_cfg(num_workers=2)
    trainer = Trainer(cfg, DataPaths.from_dir(synth), tmp_path / "run", progress=False)
    reference = EpochBatchSampler(len(trainer.train_set), cfg.train.batch_size, cfg.train.seed)
    for epoch, start in [(0, 0), (1, 0), (2, 3), (0, 5)]:  # a resume starts mid-epoch
        reference.set_epoch(epoch, start)
        samples = SeededSamples(trainer.train_set, cfg.train.seed, epoch)  # the epoch set on the dataset
        expected = [[samples[i][0] for i in batch] for batch in reference]
        got = [images for images, _ in trainer._loader(epoch, start)]
        assert len(got) == len(expected) == 8 - start
        assert all(torch.equal(a, b) for x, y in zip(got, expected) for a, b in zip(x, y)), (epoch, start)
    assert trainer.loader.persistent_workers and trainer.loader.num_workers == 2


def test_default_loader_workers(monkeypatch):
    from drmm.engine.sampling import loader_workers

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (loader_workers(None, gpu), loader_workers(None, cpu)) == (8, 2)
    assert (loader_workers(3, gpu), loader_workers(0, cpu)) == (3, 0)  # asked for: kept
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 GPUs share the 16 cores
    assert loader_workers(None, gpu) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert loader_workers(None, gpu) == 1


@pytest.mark.parametrize("native,force,expected", [(True, False, "bf16"), (False, False, "none"),
                                                   (False, True, "bf16")])
def test_bf16_only_on_cpus_with_bf16_instructions(monkeypatch, caplog, synth, tmp_path, native, force, expected):
    """train.amp=bf16 runs bf16 where the CPU has bf16 instructions; elsewhere fp32 with a one-line warning,
    unless the user insists (force_amp), which keeps bf16 and still warns."""
    import drmm.hardware

    monkeypatch.setattr(drmm.hardware, "native_bf16", lambda: native)
    trainer = Trainer(small_cfg(amp="bf16"), DataPaths.from_dir(synth), tmp_path / "run", device="cpu",
                      progress=False, force_amp=force)
    assert trainer.cfg.train.amp == expected
    assert trainer.amp_dtype == (torch.bfloat16 if expected == "bf16" else None)
    warned = [r.getMessage() for r in caplog.records if "bf16 instructions" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    assert load_config(tmp_path / "run" / "config.yaml").train.amp == expected  # the run's config says what ran


@pytest.mark.parametrize("command,overrides,forced", [
    ("train", [], False), ("train", ["--set", "train.amp=bf16"], True), ("demo", [], False),
    ("demo", ["--set", "train.amp=bf16"], True), ("demo", ["--set", "train.amp=none"], True)])
def test_commands_insist_on_bf16_only_when_it_is_named(monkeypatch, tmp_path, synth, command, overrides, forced):
    """`drmm train` and `drmm demo` hand force_amp=True to the trainer only for --set train.amp=... ."""
    import drmm.data
    import drmm.engine.train
    from helpers import run_cli

    seen = {}

    def fake_train(cfg, paths, out, **kw):
        seen["force"] = kw.get("force_amp")
        raise RuntimeError("stop after the config")

    monkeypatch.setattr(drmm.data, "generate_synthetic", lambda *a, **k: None)
    monkeypatch.setattr(drmm.engine.train, "train", fake_train)
    monkeypatch.setattr(drmm.engine.train.DataPaths, "from_dir", staticmethod(lambda folder, fmt=None: folder))
    from drmm.config import packaged_config

    args = ("--config", packaged_config("demo.yaml"), "--data", synth) if command == "train" else ()
    code, _, err = run_cli(command, "--out", tmp_path, *args, *overrides)
    assert code != 0 and "stop after the config" in err
    assert seen["force"] is forced
