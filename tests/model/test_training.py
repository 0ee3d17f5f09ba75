"""model-train on the tiny preset, on a small dataset rendered with datagen (tests/model/conftest.py)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from factorportrait.cli.train import main
from factorportrait.train_config import load_train_config
from factorportrait.trainer import train


def _config(tmp_path, data, stage=1, **overrides):
    base = {
        "data": [str(data)],
        "output": str(tmp_path / "runs"),
        "mixture": {"DynamicSweep": 1.0},
        "frames": 5,
        "iterations": 6,
        "save_every": 3,
    }
    return load_train_config(stage, None, "tiny", {**base, **overrides})


def _cli(stage: int, data, output, mixture: str, *extra: str) -> int:
    return main(
        [
            "--stage",
            str(stage),
            "--preset",
            "tiny",
            "--data",
            str(data),
            "--mixture",
            mixture,
            "--output",
            str(output),
            *extra,
        ]
    )


def test_stage_1_then_stage_2_from_its_final_model(tmp_path, tiny_dataset):
    from factorportrait.transformer import FactorPortraitTransformer

    runs = tmp_path / "runs"
    assert _cli(1, tiny_dataset, runs, "DynamicSweep=1", "--frames", "5", "--iterations", "3", "--quiet") == 0
    final1 = runs / "stage1" / "final"
    assert (final1 / "config.json").exists() and json.loads((final1 / "training.json").read_text())["steps"] == 3
    assert (
        _cli(2, tiny_dataset, runs, "ViewSweep=0.5,DynamicSweep=0.5", "--frames", "9", "--iterations", "2", "--quiet")
        == 0
    )
    stage1 = FactorPortraitTransformer.from_pretrained(final1)
    stage2 = FactorPortraitTransformer.from_pretrained(runs / "stage2" / "final")
    # stage 1 built a new controller and scaled the codes to unit RMS spread; stage 2 kept that scale
    import numpy as np

    from factorportrait.data.manifest import read_manifest_rows

    codes = np.concatenate([row.expression for row in read_manifest_rows(tiny_dataset)]).astype(np.float64)
    want = 1.0 / math.sqrt(float(np.mean(codes.var(axis=0))))
    assert stage1.config.expression_code_scale == pytest.approx(want, rel=1e-5)
    assert stage1.controller.code_scale == stage2.config.expression_code_scale == stage1.config.expression_code_scale
    other = FactorPortraitTransformer.tiny(seed=1)  # what a stage started from scratch would look like

    def distance(a, b):
        return sum(float((p - q).abs().sum()) for p, q in zip(a.parameters(), b.parameters(), strict=True))

    # stage 2 moved away from stage 1, but stayed far closer to it than to an unrelated initialisation
    assert 0 < distance(stage2, stage1) < 0.1 * distance(stage2, other)


def test_stage_2_without_stage_1_is_a_clear_error(tmp_path, tiny_dataset, capsys):
    assert _cli(2, tiny_dataset, tmp_path / "nothing", "DynamicSweep=1") == 2
    assert "run `model-train --stage 1` first" in capsys.readouterr().err


def test_loss_falls_when_overfitting_one_batch(tiny_dataset):
    from factorportrait.data.clips import ClipDataset, ClipDatasetConfig, collate_clips
    from factorportrait.data.manifest import read_manifest_rows
    from factorportrait.trainer import encode_batch, flow_matching_step
    from factorportrait.transformer import FactorPortraitTransformer
    from factorportrait.vae import WanVideoVAE

    config = load_train_config(1, None, "tiny", {"data": [str(tiny_dataset)], "frames": 5})
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), ClipDatasetConfig(frames=5, stride=4, height=32, width=32))
    batch = collate_clips([dataset[0]])
    model = FactorPortraitTransformer.tiny(seed=0)
    vae = WanVideoVAE.tiny(seed=0)
    latents = encode_batch(vae, batch, "cpu", torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        generator = torch.Generator().manual_seed(0)  # the same noise and timestep every step: pure overfitting
        loss = flow_matching_step(model, latents, batch, config, generator, "cpu", torch.float32)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, tiny_dataset):
    full = train(_config(tmp_path / "a", tiny_dataset), progress=False)
    first = train(_config(tmp_path / "b", tiny_dataset, iterations=3), progress=False)
    resumed = train(_config(tmp_path / "b", tiny_dataset), resume=True, progress=False)
    assert len(full.losses) == 6 and len(first.losses) == 3 and len(resumed.losses) == 3
    assert first.losses == pytest.approx(full.losses[:3], abs=1e-6)
    assert resumed.losses == pytest.approx(full.losses[3:], abs=1e-6)
    checkpoints = sorted(p.name for p in (tmp_path / "b" / "runs" / "stage1" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000003", "checkpoint-00000006"]


def test_broken_rows_are_skipped_and_counted(tmp_path, tiny_dataset, caplog):
    from factorportrait.data.manifest import read_manifest_rows

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    victim = next(r for r in read_manifest_rows(data) if r.dataset == "DynamicSweep")
    victim.rgb_path.unlink()
    with caplog.at_level("WARNING"):
        result = train(_config(tmp_path, data, iterations=2), progress=False)
    assert result.steps == 2
    assert any("skipped 1 broken" in r.getMessage() for r in caplog.records)


def test_latent_cache_serves_what_the_vae_would_compute_and_training_reads_it(tmp_path, tiny_dataset):
    from factorportrait.cli.cache_latents import main as cache_main
    from factorportrait.data.latent_cache import CachedClipDataset, LatentCache
    from factorportrait.trainer import build_data, build_vae

    cache = tmp_path / "cache"
    assert (
        cache_main(
            [
                "--stage",
                "1",
                "--preset",
                "tiny",
                "--data",
                str(tiny_dataset),
                "--frames",
                "5",
                "--out",
                str(cache),
                "--shard-size",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    config = _config(tmp_path, tiny_dataset, iterations=2)
    dataset, _, _ = build_data(config, 0, 1)
    cached = CachedClipDataset(dataset, LatentCache(cache))
    vae = build_vae(config)
    for index in (0, len(dataset) - 1):
        item, plain = cached[index], dataset[index]
        with torch.no_grad():
            expected = vae.encode_video(plain["video"][None])[0]
        torch.testing.assert_close(item["latents"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["c2w"], plain["c2w"])
        assert "ray_features" not in item and "ray_features" not in plain  # rays are built in the step
    # Training and validation read only cached latents (the ground truth half is their VAE decode).
    config = _config(tmp_path, tiny_dataset, iterations=2, latent_cache=str(cache), validate_every=2)
    result = train(config, progress=False)
    assert result.steps == 2 and (config.output_dir / "validation" / "step-00000002.mp4").exists()


def test_rays_built_in_the_step_equal_the_loaders(tiny_dataset):
    """The training loader ships cameras only; the step's rays equal those the dataset computes itself."""
    from factorportrait.data.clips import ClipDataset, ClipDatasetConfig, collate_clips
    from factorportrait.data.manifest import read_manifest_rows
    from factorportrait.training.step import batch_rays

    sources = read_manifest_rows(tiny_dataset)
    kwargs = dict(frames=5, height=32, width=32)
    with_rays = ClipDataset(sources, ClipDatasetConfig(**kwargs))
    cameras_only = ClipDataset(sources, ClipDatasetConfig(**kwargs, ray_features=False))
    picks = [0, len(with_rays) - 1]
    full = collate_clips([with_rays[i] for i in picks])
    lean = collate_clips([cameras_only[i] for i in picks])
    assert "ray_features" not in lean
    rays, reference = batch_rays(lean, 32, 32, "cpu")
    torch.testing.assert_close(rays, full["ray_features"], atol=0, rtol=0)
    torch.testing.assert_close(reference, full["reference_rays"], atol=0, rtol=0)
    shipped = sum(v.numel() * v.element_size() for v in full.values() if isinstance(v, torch.Tensor))
    lean_bytes = sum(v.numel() * v.element_size() for v in lean.values() if isinstance(v, torch.Tensor))
    assert lean_bytes < 0.5 * shipped  # even at 32 px the rays are most of a sample


def test_validation_video_and_ema(tmp_path, tiny_dataset):
    import av

    result = train(_config(tmp_path, tiny_dataset, iterations=2, validate_every=2, ema_decay=0.9), progress=False)
    video = tmp_path / "runs" / "stage1" / "validation" / "step-00000002.mp4"
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (32, 64, 3)  # generated | ground truth, 5 frames
    assert (result.final_model / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "runs" / "stage1" / "logs").exists()  # TensorBoard event files


# ---------------------------------------------------------------------------------------------- conditions (issue 9)
def test_c3_landmark_training_runs_records_its_layout_and_refuses_another(tmp_path, tiny_dataset):
    from factorportrait.trainer import build_model
    from factorportrait.transformer import FactorPortraitTransformer

    runs = tmp_path / "runs"
    args = ("--frames", "5", "--iterations", "2", "--validate-every", "2", "--expression-mode", "landmarks", "--quiet")
    assert _cli(1, tiny_dataset, runs, "DynamicSweep=1", *args) == 0
    final = runs / "stage1" / "final"
    config = json.loads((final / "config.json").read_text())
    assert (config["expression_mode"], config["landmark_layout"], config["num_landmarks"]) == (
        "landmarks",
        "ibug68",
        68,
    )
    assert (runs / "stage1" / "validation" / "step-00000002.mp4").exists()  # validation fed the landmarks too
    model = FactorPortraitTransformer.from_pretrained(final)
    assert model.landmark_encoder is not None
    # The next stage on data of another layout is refused with both layouts named.
    stage2 = load_train_config(
        2, None, "tiny", {"output": str(runs), "expression_mode": "landmarks", "data": [str(tiny_dataset)]}
    )
    with pytest.raises(ValueError, match="trained on landmark layout 'ibug68' with 68 points.*'mediapipe478' with 478"):
        build_model(stage2, ("mediapipe478", 478))
    with pytest.raises(ValueError, match="'ibug68' with 68 points.*input has layout None with 5 points"):
        model(
            latents=torch.zeros(1, 16, 2, 4, 4),
            timestep=torch.tensor([500.0]),
            reference_latent=torch.zeros(1, 16, 1, 4, 4),
            normal_latents=torch.zeros(1, 16, 2, 4, 4),
            ray_features=torch.zeros(1, 1536, 2, 4, 4),
            landmarks=torch.zeros(1, 5, 5, 2),
        )


def test_code_dropout_training_runs_and_is_recorded(tmp_path, tiny_dataset):
    config = _config(
        tmp_path, tiny_dataset, iterations=2, expression_dropout=0.5, reference_dropout=0.3, normal_dropout=0.2
    )
    result = train(config, progress=False)
    assert result.steps == 2 and all(math.isfinite(x) for x in result.losses)
    saved = json.loads((result.final_model / "config.json").read_text())
    assert (saved["expression_dropout"], saved["reference_dropout"], saved["normal_dropout"]) == (0.5, 0.3, 0.2)
    with pytest.raises(ValueError, match="expression_dropout.*probability"):
        _config(tmp_path, tiny_dataset, expression_dropout=1.0)


def test_dropped_conditions_are_the_neutral_ones(tiny_dataset):
    """Dropped expression -> zero (neutral) code, reference -> zeros, normals -> the black "no surface" latents,
    which for the causal VAE start with exactly the reference frame's normal latent."""
    from factorportrait.data.clips import ClipDataset, ClipDatasetConfig, collate_clips
    from factorportrait.data.manifest import read_manifest_rows
    from factorportrait.trainer import condition_inputs, encode_batch
    from factorportrait.vae import WanVideoVAE

    config = load_train_config(1, None, "tiny", {"data": [str(tiny_dataset)], "frames": 5})
    dataset = ClipDataset(read_manifest_rows(tiny_dataset), ClipDatasetConfig(frames=5, stride=4, height=32, width=32))
    batch = collate_clips([dataset[0], dataset[1]])
    vae = WanVideoVAE.tiny(seed=0)
    latents = encode_batch(vae, batch, "cpu", torch.float32)
    with torch.no_grad():
        black = vae.encode_video(torch.full((1, 3, 5, 32, 32), -1.0))
    torch.testing.assert_close(latents["no_surface_latents"][1], black[0])
    torch.testing.assert_close(latents["reference_normal_latent"][0, :, 0], black[0, :, 0], atol=1e-6, rtol=0)
    kept = condition_inputs(latents, batch, config, "cpu", torch.float32)
    drop = torch.tensor([[True, True, True], [False, False, False]])
    dropped = condition_inputs(latents, batch, config, "cpu", torch.float32, drop)
    assert torch.equal(dropped["expression_codes"][0], torch.zeros(5, batch["expression"].shape[-1]))
    assert torch.equal(dropped["reference_latent"][0], torch.zeros_like(kept["reference_latent"][0]))
    torch.testing.assert_close(dropped["normal_latents"][0], black[0])
    for key in ("expression_codes", "reference_latent", "normal_latents"):
        assert torch.equal(dropped[key][1], kept[key][1])  # sample 1 kept everything
    assert not torch.equal(kept["expression_codes"][0], dropped["expression_codes"][0])


# ---------------------------------------------------------------------------------------------- issue 10
def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_failed_start_or_a_mismatched_resume_leaves_the_run_untouched(tmp_path, tiny_dataset, capsys):
    runs = tmp_path / "runs"
    assert _cli(1, tiny_dataset, runs, "DynamicSweep=1", "--frames", "5", "--iterations", "2", "--quiet") == 0
    before = _snapshot(runs)
    assert (runs / "stage1" / "config.json") in [runs / p for p in before]
    # a typo in --data, as a new user would make it
    assert _cli(1, tmp_path / "dta", runs, "DynamicSweep=1", "--frames", "5", "--iterations", "2") == 2
    assert "dta" in capsys.readouterr().err
    # resuming with another setting: refused, the differing field named with both values
    assert _cli(1, tiny_dataset, runs, "DynamicSweep=1", "--frames", "9", "--iterations", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "frames: 5 (saved) -> 9 (now)" in err and "--force" in err and "iterations" not in err
    assert _snapshot(runs) == before  # byte-identical


def test_a_dataset_folder_with_zero_rows_is_named(tmp_path, tiny_dataset, capsys):
    import pyarrow.parquet as pq

    empty = tmp_path / "empty"
    (empty / "manifest").mkdir(parents=True)
    table = pq.read_table(next((tiny_dataset / "manifest").glob("*.parquet")))
    pq.write_table(table.slice(0, 0), empty / "manifest" / "manifest.parquet")
    shutil.copy(tiny_dataset / "manifest" / "info.json", empty / "manifest" / "info.json")
    assert _cli(1, empty, tmp_path / "runs", "DynamicSweep=1", "--quiet") == 2
    err = capsys.readouterr().err
    assert f"dataset folder '{empty}': its manifest has 0 rows" in err and "MixtureSampler" not in err


def test_gradient_accumulation_draws_new_noise_per_micro_batch(tmp_path, tiny_dataset):
    from factorportrait.trainer import draw_noise, sample_generator

    # 1 process x batch 1 x 2 micro-batches = 1 process x batch 2: the same samples, each with its own noise
    # (were both micro-batches drawn from one generator, the loss would differ from the batch-2 run's).
    accumulated = train(_config(tmp_path / "a", tiny_dataset, iterations=2, grad_accum=2), progress=False)
    batched = train(_config(tmp_path / "b", tiny_dataset, iterations=2, batch_size=2), progress=False)
    assert accumulated.global_batch == batched.global_batch == 2
    assert accumulated.losses == pytest.approx(batched.losses, rel=1e-5)
    assert accumulated.lrs == batched.lrs == [0.0, 5e-4]  # warm-up over 2 optimiser steps
    config = _config(tmp_path, tiny_dataset)
    first, second = (draw_noise(config, (1, 4, 2), [sample_generator(0, i, "cpu")], "cpu") for i in (0, 1))
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])


def test_from_wan_in_bfloat16_keeps_the_fp32_modules_and_the_weights(tmp_path):
    from diffusers import WanTransformer3DModel

    from factorportrait.transformer import WAN_CONFIGS, FactorPortraitTransformer

    torch.manual_seed(0)
    WanTransformer3DModel(**WAN_CONFIGS["tiny"]).save_pretrained(tmp_path / "wan" / "transformer")
    model = FactorPortraitTransformer.from_wan(tmp_path / "wan", torch_dtype=torch.bfloat16, text_len=8)
    wan = WanTransformer3DModel.from_pretrained(str(tmp_path / "wan"), subfolder="transformer")  # fp32 reference
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["wan.scale_shift_table"] == dtypes["wan.blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["wan.condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["wan.blocks.0.attn1.to_q.weight"] == dtypes["controller.in_proj.weight"] == torch.bfloat16
    for name, p in wan.named_parameters():
        mine = dict(model.wan.named_parameters())[name]
        if name == "patch_embedding.weight":
            mine = mine[:, : p.shape[1]]  # the Wan channels; the condition channels start at zero
        torch.testing.assert_close(mine.float(), p.to(mine.dtype).float(), atol=0, rtol=0)


def test_architecture_only_build_reads_no_weights(tmp_path, tiny_dataset):
    """build_model(weights=False) needs only config.json: same names, shapes, dtypes and buffers as the real load."""
    from factorportrait.training.build import build_model
    from factorportrait.transformer import FactorPortraitTransformer

    init = tmp_path / "init"
    FactorPortraitTransformer.tiny(seed=0).save_pretrained(init)
    config = _config(tmp_path, tiny_dataset, init=str(init))
    loaded = build_model(config)
    for weights in init.glob("*.safetensors"):
        weights.unlink()  # from here on nothing can be read but the config
    with pytest.raises(OSError):
        build_model(config)
    empty = build_model(config, weights=False)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in loaded.named_parameters()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in empty.named_parameters()} == shapes
    assert not any(p.is_meta for p in empty.parameters())
    loaded_buffers = dict(loaded.named_buffers())
    for name, buffer in empty.named_buffers():  # computed, not loaded: the rope tables
        torch.testing.assert_close(buffer, loaded_buffers[name], msg=name)
