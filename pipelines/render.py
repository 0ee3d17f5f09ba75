"""Ray job entrypoint for datagen: render ViewSweep / DynamicSweep sequences on a Ray cluster.

Submit from the repository root (token authentication on, as Ray 2.60 does by default; see README):

    export RAY_AUTH_MODE=token
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/render.py --avatars pipelines/demo_avatars.txt --mode dynamicsweep --out /abs/path/data

Inside a job the driver joins the cluster it runs on (`--ray-address auto` unless given); every other flag is
`datagen render`'s, so a config file (`--config packages/datagen/configs/dynamicsweep.toml`) works the same.
The output folder must be reachable by every node (a shared filesystem or, on one machine, a local path).
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
