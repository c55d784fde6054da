"""adapt: STAL, self-training plus active learning for domain-adaptive semantic segmentation
(DeepLabv3+, mean teacher, entropy-based image selection; Guan et al.)."""
