"""contrast: MetAug, contrastive learning with meta feature augmentation (multi-view encoders, meta
generators updated through a virtual encoder step; Li et al., ICML 2022)."""
