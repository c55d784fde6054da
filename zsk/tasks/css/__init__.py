"""css: continual semantic segmentation by self-attention transfer (SATS) on SegFormer, with MiB
distillation and PLOP pseudo-labels (Qiu et al., 2023)."""
