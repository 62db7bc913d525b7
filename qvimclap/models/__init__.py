"""Models: the EfficientAT QVIM encoder, the CLAP audio encoder, projection heads and the aligned model."""
