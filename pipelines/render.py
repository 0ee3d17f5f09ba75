"""Ray job entrypoint for datagen: render ViewSweep / DynamicSweep sequences on a Ray cluster.

Submit from the repository root (token authentication on, as Ray 2.60 does by default; see README):

    export RAY_AUTH_MODE=token
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/render.py --avatars pipelines/demo_avatars.txt --mode dynamicsweep --out /abs/path/data

Inside a job the driver joins the cluster it runs on (`--ray-address auto` unless given); every other flag is
`datagen render`'s, so a config file (`--config packages/datagen/configs/dynamicsweep.toml`) works the same.
`--out` is a folder every node can reach (a shared filesystem or, on one machine, a local path) or object storage,
which needs no shared filesystem: `--out s3://bucket/prefix` (or gs://). Each task then encodes into a local
staging folder on its node and uploads; the driver reads the parts and writes the manifest there. Credentials come
from each node's standard environment or config files (an instance role, ~/.aws, or
`ray job submit --runtime-env-json '{"env_vars": {"AWS_ACCESS_KEY_ID": ..., ...}}'`); the driver forwards only
AWS_ENDPOINT_URL(_S3) and AWS_REGION / AWS_DEFAULT_REGION to its tasks.
"""

from __future__ import annotations

import os
import sys

from datagen.cli import main


def job_argv(argv: list[str]) -> list[str]:
    """`datagen render` arguments; inside a Ray job (RAY_ADDRESS set) join that cluster by default."""
    args = ["render", *argv]
    if "--ray-address" not in argv and os.environ.get("RAY_ADDRESS"):
        args += ["--ray-address", "auto"]
    return args


if __name__ == "__main__":
    sys.exit(main(job_argv(sys.argv[1:])))
