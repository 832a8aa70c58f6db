"""Fetch the Kaggle FER2013 competition files (needs Kaggle credentials and network)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ferkit.errors import FerkitError

COMPETITION = "challenges-in-representation-learning-facial-expression-recognition-challenge"
DATASET = "msambare/fer2013"


def download(out: Path, source: str = "competition") -> Path:
    """Download FER2013 into `out` with kagglehub and return the folder holding the files.

    source="competition" gets the Kaggle competition files (fer2013.csv / icml_face_data.csv,
    needs the competition rules accepted on kaggle.com); "folders" gets the image-folder copy.
    """
    try:
        import kagglehub
    except ImportError:
        raise FerkitError("kagglehub is not installed: pip install 'ferkit[kaggle]'") from None
    try:
        if source == "competition":
            cached = Path(kagglehub.competition_download(COMPETITION))
        elif source == "folders":
            cached = Path(kagglehub.dataset_download(DATASET))
        else:
            raise FerkitError(f"--source {source!r}: expected competition or folders")
    except FerkitError:
        raise
    except Exception as e:  # kagglehub raises many types for auth and network failures
        reason = str(e).splitlines()[0] if str(e) else ""
        raise FerkitError(
            f"download from Kaggle failed ({e.__class__.__name__}: {reason}); "
            "check the network, put your API token in ~/.kaggle/kaggle.json or set KAGGLE_USERNAME and "
            "KAGGLE_KEY, accept the competition rules on kaggle.com, or download the files by hand and "
            "pass --data PATH"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cached, out, dirs_exist_ok=True)
    return out
