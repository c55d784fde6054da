"""hsi: hyperspectral image classification with band-group 3-D CNN features, a deep CRF trained piecewise,
mean-field inference and a deconvolution refinement network (Alam et al., IEEE TGRS 2019)."""
