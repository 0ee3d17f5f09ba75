"""Moved to `factorportrait.training` (build, step, loop, validation); this module keeps the old names working."""

from .training.build import (  # noqa: F401
    build_data,
    build_dataset,
    build_model,
    build_vae,
    make_loader,
    resolve_init,
    vae_source,
)
from .training.loop import TrainResult, check_resume, train  # noqa: F401
from .training.step import (  # noqa: F401
    condition_inputs,
    draw_noise,
    encode_batch,
    flow_matching_step,
    sample_generator,
    step_generator,
)
from .training.validation import validate  # noqa: F401
