"""Layer 2: run a saved model (checkpoints, model cards, ensembles, TTA, ONNX Runtime); no training code."""
