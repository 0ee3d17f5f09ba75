"""Training: config (`config`), building the parts (`build`), one step's maths (`step`), accelerate set-up and
export (`distributed`), checkpoints (`checkpoints`), validation videos (`validation`), the loop (`loop`),
the flow-matching objective (`flow_matching`)."""
