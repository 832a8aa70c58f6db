"""Names every layer shares, importing nothing: FER2013's classes (in the dataset's own numbering) and
splits, the test-time augmentation modes and the backends a model runs on."""

CLASS_NAMES: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES = len(CLASS_NAMES)
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest", "test")
# test-time augmentation: the faces alone, with their mirror images, or ten crops (see data.transforms)
TTA_MODES: tuple[str, ...] = ("none", "flip", "tencrop")
# torch: a checkpoint, ensemble spec or model card; onnx: a file `ferkit export` wrote, on ONNX Runtime
BACKENDS: tuple[str, ...] = ("torch", "onnx")
