"""The whole reproduction chain as resumable steps (pipelines/reproduce.py is the command line around it)."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .config import DATAGEN_MODES, VARIANTS, ReproConfig
from .data import RenderJob, render_jobs, split_roots
from .steps import StepRunner, write_json_atomic

log = logging.getLogger("factorportrait.reproduction")

#: render(job, dataset_root) renders one job with datagen (the orchestrator's business: this package never
#: imports datagen).
RenderFn = Callable[[RenderJob, Path], None]


#: Modules imported at the start of a run, in the main process and in every worker.
CHAIN_MODULES = tuple(
    f"factorportrait.{name}"
    for name in (
        "trainer",
        "data.clips",
        "data.latent_cache",
        "transformer",
        "vae",
        "cli.infer",
        "cli.evaluate",
        "inference.pipeline",
        "metrics",
        "expression_encoder",
        "reproduction.evaluate",
        "reproduction.finetune",
        "reproduction.instruments",
        "reproduction.prior",
        "reproduction.vae_train",
        "reproduction.sensitivity",
        "reproduction.report",
    )
) + ("diffusers",)


def _say(message: str) -> None:
    log.info(message)


def run_reproduction(
    config: ReproConfig,
    run_dir: Path,
    render: RenderFn,
    available: set[str],
    report_path: Path,
) -> dict[str, dict]:
    """Run (or resume) every step; returns the step records (marker contents) by name."""
    import importlib

    import torch

    from .workers import Workers

    # Import every module the chain uses now (here and in the worker processes): a long run then uses the code
    # as it was at its start, even if the working tree changes while it runs.
    for name in CHAIN_MODULES:
        importlib.import_module(name)

    torch.set_num_threads(config.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", config.to_dict())
    steps = StepRunner(run_dir)
    tick = time.perf_counter()
    with Workers(config.step_parallel, config.threads, CHAIN_MODULES) as workers:
        _run_steps(config, run_dir, render, available, steps, workers)
    # 6. report (always regenerated)
    from .report import write_report

    report = write_report(config, run_dir, report_path, steps.summaries)
    log.info("wrote %s; this invocation took %.0f s", report, time.perf_counter() - tick)
    return steps.summaries


def _run_steps(
    config: ReproConfig, run_dir: Path, render: RenderFn, available: set[str], steps: StepRunner, workers
) -> None:
    """Steps 1-5 (data, VAE and prior, instruments, latents, fine-tuning, evaluation); `workers` runs the
    independent ones side by side."""
    # 1. data
    wanted = [d for d, n in config.sequences.items() if n > 0]
    jobs = render_jobs(config, available)
    steps.summaries["data-plan"] = {
        "wall_s": 0.0,
        "summary": {
            "available": [d for d in wanted if d in available],
            "missing": [d for d in wanted if d not in available],
            "jobs": [{"name": j.name, "ids": j.ids, "sequences": j.sequences, "frames": j.frames} for j in jobs],
        },
    }
    from concurrent.futures import ThreadPoolExecutor

    def render_step(job: RenderJob) -> None:
        root = run_dir / job.root

        def do_render() -> dict:
            render(job, root)
            return {"root": job.root, "ids": job.ids, "sequences": job.sequences, "frames": job.frames}

        steps.run(job.name, do_render, [f"{job.root}/manifest/manifest.parquet"])

    # datagen jobs are separate processes: run a few at once (each one renders in its own process)
    with ThreadPoolExecutor(max_workers=config.render_parallel) as pool:
        list(pool.map(render_step, jobs))
    present = set(split_roots(run_dir, "train"))

    # 2-4. VAE -> prior beside the instruments (independent of both), then the latent caches
    from .finetune import build_cache, first_stage, latent_cache_dir, run_stage, train_config
    from .instruments import FILES, train_instruments
    from .prior import train_prior
    from .vae_train import train_vae

    def vae_then_prior() -> None:
        steps.run("vae", lambda: workers.call(train_vae, config, run_dir, _say), ["wan/vae/config.json"])
        steps.run("prior", lambda: workers.call(train_prior, config, run_dir, _say), ["wan/transformer/config.json"])

    def instruments() -> None:  # before fine-tuning: independent of it, and cheap to fail early on
        outputs = [f"instruments/{f}" for f in FILES.values()]
        steps.run("instruments", lambda: workers.call(train_instruments, config, run_dir, _say), outputs)

    workers.side_by_side([vae_then_prior, instruments])

    data_roots = list(split_roots(run_dir, "train").values())

    def latents(frames: int) -> None:
        cache = latent_cache_dir(run_dir, frames).relative_to(run_dir)
        steps.run(
            f"latents-frames{frames:03d}",
            lambda: workers.call(build_cache, config, run_dir, frames, data_roots, present),
            [f"{cache}/index.json"],
        )

    workers.side_by_side([lambda f=f: latents(f) for f in sorted(set(config.stage_frames), reverse=True)])

    # 3b. fine-tuning: one chain of stages per variant; C1 continues from Full's stage 2, so it runs in Full's chain
    trained: dict[str, Path] = {}

    def chain(variant: str) -> bool:
        for stage in range(first_stage(variant), 5):
            name = f"train-{variant}-stage{stage}"
            full_stage2 = run_dir / "train" / "full" / "stage2" / "final" / "config.json"
            if variant == "c1" and not steps.is_done(name) and not full_stage2.exists():
                steps.summaries[name] = {"wall_s": 0.0, "summary": {"error": "needs Full's stage 2"}}
                return False
            cfg = train_config(config, run_dir, variant, stage, data_roots, present)
            out = f"train/{variant}/stage{stage}/final/config.json"
            try:
                steps.run(name, lambda cfg=cfg: workers.call(run_stage, cfg), [out])
            except Exception as err:  # noqa: BLE001 - one ablation failing must not take the others down
                log.error("step %s failed: %s", name, err)
                log.debug(traceback.format_exc())
                steps.summaries[name] = {"wall_s": 0.0, "summary": {"error": f"{type(err).__name__}: {err}"}}
                return False
        trained[variant] = run_dir / "train" / variant / "stage4" / "final"
        return True

    def chains_of(variants: list[str]) -> Callable[[], None]:
        def run_chains() -> None:
            for variant in variants:
                chain(variant)

        return run_chains

    chosen = [v for v in VARIANTS if v in config.variants]
    first = ["full"] + (["c1"] if "c1" in chosen else [])
    # longest first: C3's landmark encoder makes it the costliest chain, then Full + C1, then C2
    groups = [first] + [[v] for v in ("c3", "c2") if v in chosen]
    workers.side_by_side([chains_of(g) for g in groups])
    trained = {v: trained[v] for v in VARIANTS if v in trained}

    # 5. evaluation
    from .evaluate import baselines, eval_clips, evaluate_model, run_model_eval

    splits = {
        split: clips
        for split in ("heldout_ids", "heldout_seqs")
        if split_roots(run_dir, split) and (clips := eval_clips(config, run_dir, split))
    }
    steps.run("eval-baselines", lambda: baselines(config, run_dir, splits), [])

    def evaluate(variant: str) -> None:
        name, model_dir = f"eval-{variant}", trained[variant]
        swaps = variant in config.swap_variants

        def run() -> dict:
            return workers.call(evaluate_model, config, run_dir, variant, model_dir, splits, swaps=swaps, log=_say)

        try:
            steps.run(name, run, [f"eval/videos/{variant}"])
        except Exception as err:  # noqa: BLE001
            log.error("step %s failed: %s", name, err)
            steps.summaries[name] = {"wall_s": 0.0, "summary": {"error": f"{type(err).__name__}: {err}"}}

    # the models with swap tests take longest: start them first
    order = sorted(trained, key=lambda v: v not in config.swap_variants)
    workers.side_by_side([lambda v=v: evaluate(v) for v in order])
    if "full" in trained and steps.is_done("eval-full"):
        try:
            steps.run(
                "model-eval",
                lambda: {"groups": run_model_eval(run_dir, "full")},
                ["eval/model_eval_full/results.json"],
            )
        except Exception as err:  # noqa: BLE001
            steps.summaries["model-eval"] = {"wall_s": 0.0, "summary": {"error": f"{type(err).__name__}: {err}"}}
        try:
            steps.run("infer-demo", lambda: infer_demo(config, run_dir, trained["full"]), ["eval/infer_demo.mp4"])
        except Exception as err:  # noqa: BLE001
            steps.summaries["infer-demo"] = {"wall_s": 0.0, "summary": {"error": f"{type(err).__name__}: {err}"}}

    if trained and splits.get("heldout_ids"):
        from .sensitivity import condition_sensitivity

        try:
            steps.run("sensitivity", lambda: condition_sensitivity(config, run_dir, trained, splits), [])
        except Exception as err:  # noqa: BLE001 - a diagnostic must not take the report down
            log.error("step sensitivity failed: %s", err)
            steps.summaries["sensitivity"] = {"wall_s": 0.0, "summary": {"error": f"{type(err).__name__}: {err}"}}


def infer_demo(config: ReproConfig, run_dir: Path, model_dir: Path) -> dict:
    """`model-infer` with the trained expression encoder on a held-out ground-truth video (the CLI path)."""
    from ..cli.infer import main
    from .instruments import FILES

    videos = sorted((run_dir / "eval" / "videos" / "gt" / "heldout_ids").rglob("*.mp4"))
    refs = sorted((run_dir / "eval" / "videos" / "reference" / "heldout_ids").rglob("*.png"))
    if not videos or not refs:
        raise FileNotFoundError("no held-out ground-truth video / reference written by eval-full")
    out = run_dir / "eval" / "infer_demo.mp4"
    argv = [
        "--model",
        str(model_dir),
        "--vae",
        str(run_dir / "wan"),
        "--image",
        str(refs[0]),
        "--driving",
        str(videos[0]),
        "--expression-encoder",
        str(run_dir / "instruments" / FILES["expression"]),
        "--camera",
        "static",
        "--frames",
        str(config.eval_frames),
        "--height",
        str(config.resolution),
        "--width",
        str(config.resolution),
        "--steps",
        str(config.eval_steps),
        "--scheduler",
        "euler",
        "--window",
        str(config.eval_frames),
        "--out",
        str(out),
        "--quiet",
    ]
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"model-infer exited with {rc}")
    return {"argv": argv, "out": str(out)}


__all__ = ["run_reproduction", "DATAGEN_MODES"]
