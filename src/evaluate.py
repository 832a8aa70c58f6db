"""The seed's evaluation command, kept working: `python src/evaluate.py --model_path PATH`."""

import sys

from ferkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
