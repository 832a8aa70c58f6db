"""Layer 4: write models for others: safetensors model cards, ONNX and int8 export."""
