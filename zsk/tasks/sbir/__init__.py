"""sbir: zero-shot sketch-based image retrieval with ACNet (a sketch-to-photo generator, a PatchGAN
discriminator and a proxy-trained retrieval extractor; Ren et al., 2021)."""
