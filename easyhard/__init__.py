"""easyhard: differentially private image synthesis with diffusion models (DP-FETA and DPDM)."""

__version__ = "0.1.0"
