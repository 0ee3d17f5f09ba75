"""CPU-scale reproduction of the paper's ablations and control modes (issue 15); see docs/reproduction.md."""
