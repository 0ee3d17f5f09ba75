"""datagen on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1, started here.

Render 2 sequences to s3://, kill the process between the two uploads of the second, rerun, validate on S3 and
read the manifest back with pyarrow straight from S3.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("moto")

BUCKET = "datagen-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    from pyarrow import fs

    fs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True,
                    access_key="testing", secret_key="testing").create_dir(BUCKET)  # fmt: skip
    yield env
    server.terminate()
    server.wait(timeout=10)


def _objects(env: dict[str, str], prefix: str) -> dict[str, int]:
    from pyarrow import fs

    s3 = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], scheme="http", region="us-east-1",
                         access_key="testing", secret_key="testing")  # fmt: skip
    infos = s3.get_file_info(fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path.removeprefix(f"{BUCKET}/{prefix}/"): i.size for i in infos if i.type == fs.FileType.File}


def test_s3_round_trip_with_a_worker_killed_between_uploads(s3_server, tmp_path, monkeypatch):
    env = {**os.environ, **s3_server, "DATAGEN_STAGE_DIR": str(tmp_path / "stage")}
    ids = tmp_path / "ids.txt"
    ids.write_text("demo-005\n")
    out = f"s3://{BUCKET}/runs/one"
    crashed_seq = "demo-005/dynamicsweep/0001"
    cmd = [sys.executable, "-m", "datagen.cli", "render", "--avatars", str(ids), "--out", out, "--mode",
           "dynamicsweep", "--sequences", "2", "--frames", "2", "--resolution", "64", "--workers", "0",
           "--backend", "cpu", "--quiet"]  # fmt: skip
    crashed = subprocess.run(
        cmd, env={**env, "DATAGEN_INJECT_CRASH": f"{crashed_seq}@upload"}, capture_output=True, text=True, timeout=300
    )
    assert crashed.returncode == 17, crashed.stdout + crashed.stderr  # died after one of the two uploads
    objects = _objects(s3_server, "runs/one")
    assert "manifest/parts/demo-005__dynamicsweep__0000.parquet" in objects
    assert "manifest/parts/demo-005__dynamicsweep__0001.parquet" not in objects  # not in the manifest: half uploaded
    assert f"videos/{crashed_seq}_rgb.mp4" in objects and f"videos/{crashed_seq}_normal.mp4" not in objects
    assert "manifest/manifest.parquet" not in objects

    for key, value in {**s3_server, "DATAGEN_STAGE_DIR": env["DATAGEN_STAGE_DIR"]}.items():
        monkeypatch.setenv(key, value)
    from datagen.config import RenderConfig
    from datagen.manifest import validate_dataset
    from datagen.runner import run

    config = RenderConfig.for_mode("dynamicsweep", sequences=2, frames=2, resolution=64, workers=0, backend="cpu")
    summary = run(config, ["demo-005"], out, progress=False)  # checks the first by downloading its checksums
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 0)
    assert summary.manifest == f"{out}/manifest/manifest.parquet"
    report = validate_dataset(out)
    assert report.ok and report.rows_checked == 2, report.format()
    objects = _objects(s3_server, "runs/one")
    assert not [k for k in objects if ".tmp" in k or ".write-probe" in k]  # temporaries were moved or removed
    assert not list((tmp_path / "stage").rglob("*.mp4"))  # staged videos are deleted after upload

    # a user reads the manifest with plain pyarrow from S3
    import pyarrow.parquet as pq
    from pyarrow import fs

    s3 = fs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"], scheme="http", region="us-east-1")
    table = pq.read_table(f"{BUCKET}/runs/one/manifest/manifest.parquet", filesystem=s3)
    assert table.column("sequence_id").to_pylist() == ["demo-005/dynamicsweep/0000", crashed_seq]
    assert table.column("num_frames").to_pylist() == [2, 2]

    # a rerun does no work; validate from the CLI works on the URI too
    assert run(config, ["demo-005"], out, progress=False).skipped == 2
    from datagen.cli import main

    assert main(["validate", out, "--no-decode"]) == 0


def test_unreachable_bucket_is_a_clear_error(s3_server, tmp_path, monkeypatch, capsys):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    ids = tmp_path / "ids.txt"
    ids.write_text("demo-000\n")
    from datagen.cli import main

    code = main(["render", "--avatars", str(ids), "--out", "s3://no-such-bucket/x", "--frames", "2", "--workers", "0"])
    assert code == 2
    assert "s3://no-such-bucket/x" in capsys.readouterr().err
