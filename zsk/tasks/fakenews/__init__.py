"""fakenews: COVID-19 fake-news detection by fine-tuned transformers and their fusion (Ro-CT-BERT).

Chen et al., "Transformer-based Language Model Fine-tuning Methods for COVID-19 Fake News
Detection", CONSTRAINT@AAAI 2021 (arXiv 2101.05509). Spec: ../shared/specs/fakenews.md.
"""
