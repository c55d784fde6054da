"""refer: referring image segmentation with AlignFormer (Swin + BERT, bidirectional vision-language
attention, a deformable pixel decoder and a linguistic query decoder)."""
