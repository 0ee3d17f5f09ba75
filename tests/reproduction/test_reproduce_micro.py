"""The whole reproduction chain at micro size (seconds per step): every artifact and the report's tables exist.

Numbers are not checked (a micro run learns nothing); what is checked is that the chain cannot rot: data of every
split, a diffusers VAE and Wan folder the project's loaders read, four trained variants, instruments that
`ExpressionEncoder.from_file` and `model-eval`'s loader take, evaluation videos, the report with its tables and
figure, and that a rerun resumes instead of redoing work.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pipeline():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "pipelines" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    report = out / "docs" / "reproduction.md"
    pipeline = _pipeline()
    assert pipeline.main(["--preset", "micro", "--out", str(out / "run"), "--report", str(report)]) == 0
    return pipeline, out / "run", report


def test_every_artifact_exists(micro_run):
    pipeline, run, report = micro_run
    from factorportrait.reproduction.config import DATAGEN_MODES, load_repro_config

    config = load_repro_config("micro")
    modes = pipeline.datagen_modes()
    datasets = [d for d in config.sequences if DATAGEN_MODES[d] in modes]
    assert {"ViewSweep", "DynamicSweep"} <= set(datasets)
    for split in ("train", "heldout_ids") + (("heldout_seqs",) if config.heldout_sequence_ids else ()):
        for dataset in datasets:
            assert (run / "data" / split / dataset / "manifest" / "manifest.parquet").is_file(), (split, dataset)
    assert (run / "data" / "instruments" / "PhoneCapture" / "manifest" / "manifest.parquet").is_file()

    from factorportrait.expression_encoder import ExpressionEncoder
    from factorportrait.metrics import load_feature_network
    from factorportrait.transformer import FactorPortraitTransformer
    from factorportrait.vae import WanVideoVAE

    vae = WanVideoVAE.from_pretrained(run / "wan")  # diffusers format, trained statistics in the config
    assert len(vae.config.latents_mean) == 16
    FactorPortraitTransformer.from_wan(run / "wan")  # the prior is a Wan folder: what --wan takes
    ExpressionEncoder.from_file(run / "instruments" / "expression_encoder.safetensors")  # --expression-encoder
    load_feature_network(run / "instruments" / "aed.pt", "aed")  # model-eval --weights expression=...
    load_feature_network(run / "instruments" / "csim.pt", "csim")  # model-eval --weights arcface=...
    for variant in ("full", "c1", "c2", "c3"):
        final = run / "train" / variant / "stage4" / "final"
        assert (final / "config.json").is_file(), variant
        marker = json.loads((run / "steps" / f"eval-{variant}.done.json").read_text())
        modes_done = marker["summary"]["splits"]["heldout_ids"]
        assert set(modes_done) == {"static-frontal", "static-novel-view", "moving-camera-static-face", "all-dynamic"}
        assert list((run / "eval" / "videos" / variant).rglob("*.mp4")), variant
    swaps = json.loads((run / "steps" / "eval-full.done.json").read_text())["summary"]["splits"]["heldout_ids"]
    assert all({"true", "camera", "expression", "normals", "reference"} <= set(m) for m in swaps.values())
    assert (run / "eval" / "model_eval_full" / "results.json").is_file()
    assert (run / "eval" / "infer_demo.mp4").is_file()

    text = report.read_text()
    for heading in ("## Tab. 2 shape", "## Tab. 3 shape", "## Swap tests", "## Instruments", "## Wall time per step"):
        assert heading in text, heading
    for row in ("| Full |", "| C1 (no DynamicSweep) |", "| C2 (no normal maps) |", "| C3 (landmarks) |"):
        assert row in text, row
    assert "Failed steps" not in text
    assert (report.parent / "figures" / "reproduction_contact_sheet.png").is_file()


def test_rerun_resumes_every_step(micro_run):
    pipeline, run, report = micro_run
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "steps").glob("*.done.json")}
    report.unlink()
    assert pipeline.main(["--preset", "micro", "--out", str(run), "--report", str(report)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "steps").glob("*.done.json")} == markers
    assert report.is_file()  # the report is regenerated from the markers
