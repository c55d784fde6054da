"""medseg: DTC, semi-supervised 3-D medical image segmentation through dual-task consistency
(Luo, Chen, Song, Wang, AAAI 2021)."""
