"""The Gradient Origin Network: decoders, batches, the model, its inference and its training."""
