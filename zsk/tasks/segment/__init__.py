"""ZegCLIP (Zhou et al., CVPR 2023): one-stage zero-shot semantic segmentation by adapting a frozen CLIP."""
