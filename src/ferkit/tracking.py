"""Experiment tracking: the one place metrics are written (CSV/JSON always, Weights & Biases when enabled).

Files in ``output_dir``:

- ``metrics.csv``: one row per epoch, ``epoch`` first, then every key in first-seen order.
- ``summary.json``: final numbers, merged across :meth:`Tracker.log_summary` calls and jobs.
- ``wandb_run_id.txt``: the W&B run to resume (``wandb_run_id_<job_type>.txt`` for jobs other than "train",
  so that, say, an evaluation in the same folder never takes over the training run).
- ``wandb/``: everything W&B writes, including its artifact staging area and cache (never under ``$HOME``).

wandb is imported only when a run uses it: its import takes about a second, which commands that track
nothing (predict, export, serve, ``--wandb disabled``) need not pay.

Every file is replaced atomically (temporary file in the same folder, then ``os.replace``), so a killed
process leaves either the old or the new version, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from ferkit.errors import FerkitError
from ferkit.utils.io import atomic_write_text

if TYPE_CHECKING:
    import wandb

MODES: tuple[str, ...] = ("online", "offline", "disabled", "auto")
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
# Where W&B would otherwise write under $HOME (artifact staging, artifact cache and its own logs, downloads).
_WANDB_DIR_VARS = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache", "WANDB_ARTIFACT_DIR": "artifacts"}


def _checked(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise FerkitError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def requested_mode(mode: str) -> str:
    """The W&B mode asked for: an explicit ``mode`` wins, "auto" follows ``WANDB_MODE`` when that is set.

    Returns "online", "offline", "disabled" or "auto"; raises FerkitError for an unknown mode.
    """
    if _checked(mode, MODES, "W&B mode") == "auto" and (env_mode := os.environ.get("WANDB_MODE")):
        return _checked(env_mode, MODES[:3], "WANDB_MODE")
    return mode


def has_wandb_credentials() -> bool:
    """Whether W&B credentials are configured (``WANDB_API_KEY``, ``wandb login``'s netrc entry, a settings
    file), checked locally without any server request. Starts W&B's service process."""
    import wandb

    # Silent: otherwise login() prints a banner, looking the account up on the server for it.
    wandb.setup(wandb.Settings(silent=True))
    return wandb.login(prompt=False, verify=False)


def _to_builtin(value: Any) -> Any:
    """JSON fallback for numpy scalars/arrays and paths."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _safe_name(text: str) -> str:
    """``text`` with everything but letters, digits, '-', '_' and '.' replaced (W&B artifact names)."""
    return re.sub(r"[^\w.-]+", "_", text)


class Tracker:
    """Writes epoch metrics, final numbers, plots and model checkpoints to CSV/JSON and (optionally) W&B.

    ``mode``: "online", "offline", "disabled" (no W&B files at all) or "auto": ``WANDB_MODE`` if set, else
    "online" when W&B credentials are configured (:func:`has_wandb_credentials`), else "offline"; an
    explicit mode wins over ``WANDB_MODE``. W&B never decides whether training works: if it fails to start
    or to log, one warning line goes to stderr and tracking continues with CSV/JSON only.

    ``resume_epoch=k`` continues a run restarted from the checkpoint of epoch k: rows after k are dropped
    from metrics.csv and the same W&B run is resumed (W&B's own history keeps the dropped epochs; its
    charts use ``epoch`` as x axis). With ``enabled=False`` (every rank but 0) all methods do nothing.
    Usable as a context manager, which finishes the run (as failed on an exception).
    """

    def __init__(
        self,
        output_dir: Path,
        config: dict[str, Any],
        *,
        mode: str = "auto",
        project: str = "facial-expression-recognition",
        tags: Sequence[str] = (),
        run_name: str | None = None,
        job_type: str = "train",
        resume_epoch: int | None = None,
        enabled: bool = True,
    ) -> None:
        mode = requested_mode(mode)  # on every rank, so that a typo fails everywhere alike
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._run: Any = None  # the wandb Run while W&B is active
        self._mode = "disabled"
        self._run_name = run_name
        self._saved_env: dict[str, str | None] = {}
        self._rows: list[dict[str, Any]] = []
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_epoch is not None:
            self._rows = [row for row in self._read_rows() if int(row["epoch"]) <= resume_epoch]
            self._write_rows()
        self._start_wandb(mode, config, project, tags, job_type, resume_epoch)

    # -- W&B plumbing -------------------------------------------------------------------------------

    def _start_wandb(
        self,
        mode: str,
        config: dict[str, Any],
        project: str,
        tags: Sequence[str],
        job_type: str,
        resume_epoch: int | None,
    ) -> None:
        """Start (or resume) the W&B run, keeping all of W&B's files inside ``output_dir/wandb``."""
        if mode == "disabled":
            return
        for var, sub in _WANDB_DIR_VARS.items():
            self._saved_env[var] = os.environ.get(var)
            os.environ[var] = str(self.output_dir / "wandb" / sub)
        id_file = self.output_dir / (
            "wandb_run_id.txt" if job_type == "train" else f"wandb_run_id_{job_type}.txt"
        )
        run_id = id_file.read_text().strip() if resume_epoch is not None and id_file.exists() else None
        try:
            import wandb  # a missing install, too, only means "continue without W&B"

            if mode == "auto":
                mode = "online" if has_wandb_credentials() else "offline"
            self._run = wandb.init(
                dir=self.output_dir,
                project=project,
                config=config,
                tags=list(tags),
                name=self._run_name,
                job_type=job_type,
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(silent=True),
            )
            self._run.define_metric("epoch")
            self._run.define_metric("*", step_metric="epoch")
        except Exception as e:  # any W&B failure means "continue without W&B"
            self._drop_wandb("could not start", e)
            return
        self._mode = mode
        atomic_write_text(id_file, self._run.id + "\n")

    def _drop_wandb(self, what: str, error: Exception) -> None:
        """Warn in one line, close the run as failed if there is one, and continue with CSV/JSON only."""
        detail = (str(error).strip().splitlines() or [""])[0]
        print(
            f"warning: W&B {what} ({type(error).__name__}: {detail}); continuing with CSV/JSON only",
            file=sys.stderr,
        )
        run, self._run = self._run, None
        if run is not None:
            with contextlib.suppress(Exception):  # it is already broken; finishing also removes its hooks
                run.finish(exit_code=1)
        self._restore_env()

    def _restore_env(self) -> None:
        for var, value in self._saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self._saved_env = {}

    def _wandb(self, what: str, action: Callable[[Any], object]) -> None:
        """Apply ``action`` to the W&B run if there is one; a failure switches W&B off instead of raising."""
        if self._run is None:
            return
        try:
            action(self._run)
        except Exception as e:
            self._drop_wandb(f"failed to {what}", e)

    # -- metrics -------------------------------------------------------------------------------------

    def _read_rows(self) -> list[dict[str, Any]]:
        path = self.output_dir / METRICS_FILE
        if not path.exists():
            return []
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def _write_rows(self) -> None:
        header = list(dict.fromkeys(["epoch", *(key for row in self._rows for key in row)]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.output_dir / METRICS_FILE, buf.getvalue())

    def log_epoch(self, row: dict[str, float | int]) -> None:
        """Record one epoch; ``row["epoch"]`` (1-based int) must be greater than the previous epoch."""
        if not self.enabled:
            return
        epoch = int(row["epoch"])
        if self._rows and epoch <= int(self._rows[-1]["epoch"]):
            raise ValueError(f"epoch {epoch} logged after epoch {self._rows[-1]['epoch']}")
        self._rows.append(dict(row))
        self._write_rows()
        self._wandb("log an epoch", lambda run: run.log(dict(row)))

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """Record final numbers in summary.json (merged with what is there) and the W&B run summary."""
        if not self.enabled:
            return
        path = self.output_dir / SUMMARY_FILE
        summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        summary.update(metrics)
        atomic_write_text(path, json.dumps(summary, indent=2, default=_to_builtin) + "\n")
        self._wandb("update the summary", lambda run: run.summary.update(dict(metrics)))

    def log_confusion_matrix(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        class_names: Sequence[str],
        title: str = "confusion_matrix",
    ) -> None:
        """Log a W&B confusion-matrix chart (W&B only) under the key ``title``; labels are class indices."""
        if not self.enabled:
            return
        if len(y_true) != len(y_pred):
            raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")

        def log(run: Any) -> None:
            import wandb

            chart = wandb.plot.confusion_matrix(
                y_true=np.asarray(y_true).tolist(),
                preds=np.asarray(y_pred).tolist(),
                class_names=list(class_names),
                title=title,
            )
            run.log({title: chart})

        self._wandb("log a confusion matrix", log)

    def log_predictions(
        self,
        images: np.ndarray,
        y_true: np.ndarray | Sequence[int],
        probs: np.ndarray,
        class_names: Sequence[str],
        key: str = "val_predictions",
    ) -> None:
        """Log a W&B table (W&B only): image, true, pred and one probability column ``p_<class>`` per class.

        ``images`` are uint8 (N, H, W) faces, ``y_true`` N labels, ``probs`` (N, num_classes).
        """
        if not self.enabled:
            return
        labels, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(images), len(class_names)) or labels.shape != (len(images),):
            raise ValueError(
                f"expected {len(images)} labels and ({len(images)}, {len(class_names)}) probabilities, "
                f"got {labels.shape} and {probs.shape}"
            )

        def log(run: Any) -> None:
            import wandb

            table = wandb.Table(columns=["image", "true", "pred", *(f"p_{name}" for name in class_names)])
            for image, label, p in zip(images, labels, probs, strict=True):
                table.add_data(wandb.Image(image), class_names[label], class_names[p.argmax()], *p.tolist())
            run.log({key: table})

        self._wandb("log predictions", log)

    # -- models --------------------------------------------------------------------------------------

    def log_model(
        self, path: Path, aliases: Sequence[str] = ("best", "latest"), metadata: dict[str, Any] | None = None
    ) -> None:
        """Upload a checkpoint as W&B artifact ``model-<run name or id>`` (type "model") with ``aliases``."""
        if not self.enabled:
            return
        if not Path(path).is_file():  # a caller's mistake, not a W&B problem: do not just switch W&B off
            raise FileNotFoundError(f"no model file {path}")

        def log(run: Any) -> None:
            import wandb

            artifact = wandb.Artifact(
                f"model-{_safe_name(self._run_name or run.id)}", "model", metadata=metadata
            )
            artifact.add_file(str(path))
            run.log_artifact(artifact, aliases=list(aliases))

        self._wandb("log the model", log)

    def use_model(self, artifact_or_path: str | Path) -> None:
        """Declare the model this job uses (e.g. evaluates), for W&B lineage.

        The path or artifact name is recorded as config ``input_model``. Online, the model also becomes an
        input artifact of the run: a local file as a reference artifact (``file://`` URI and checksum,
        nothing uploaded; see :func:`model_reference`), anything else as a W&B artifact name such as
        ``"entity/project/model-run1:best"``. W&B refuses artifact inputs offline.
        """
        self._wandb(
            "record the input model",
            lambda run: run.config.update({"input_model": str(artifact_or_path)}, allow_val_change=True),
        )
        if self._mode == "online":
            self._wandb(
                "use the model artifact", lambda run: run.use_artifact(model_reference(artifact_or_path))
            )

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (marked failed when ``exit_code`` != 0). Safe to call twice."""
        self._wandb("finish", lambda run: run.finish(exit_code=exit_code))
        self._run = None
        self._restore_env()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def model_reference(artifact_or_path: str | Path) -> wandb.Artifact | str:
    """A reference artifact ``model-<folder>-<stem>`` (type "model") for an existing local file; other
    strings (W&B artifact names) are returned as they are."""
    path = Path(artifact_or_path)
    if not path.is_file():
        return str(artifact_or_path)
    import wandb

    path = path.resolve()
    artifact = wandb.Artifact(f"model-{_safe_name(path.parent.name)}-{_safe_name(path.stem)}", type="model")
    artifact.add_reference(path.as_uri())
    return artifact
