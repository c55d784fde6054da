"""gzsl: zero-shot image classification by graph propagation of classifiers (DGP, SGCN, GCNZ)."""
