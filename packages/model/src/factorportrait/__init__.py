"""FactorPortrait model."""
