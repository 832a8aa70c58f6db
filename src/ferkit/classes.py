"""FER2013 class names, in the dataset's own numbering."""

CLASS_NAMES: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES = len(CLASS_NAMES)
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest", "test")
