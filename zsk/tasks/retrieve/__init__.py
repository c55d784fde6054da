"""retrieve: cross-modal image-text retrieval with semantically enhanced hard negatives (LSEH, Gong & Cosma,
Pattern Recognition 2023) on VSE++ and VSE infinity."""
