"""The seed's training command, kept working: `python src/train.py --model cnn --epochs 50 ...`."""

import sys

from ferkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
