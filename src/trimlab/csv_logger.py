"""Lightning's CSVLogger, except that a resumed run keeps the rows it logged before its checkpoint.

Lightning deletes `metrics.csv` whenever a logger opens a dir that holds one, so a run resumed after SIGTERM lost
its first epochs' rows. Here a resume keeps every row up to the checkpoint's epoch and drops only the rows logged
after it (the interrupted epoch), which the resumed run logs again: the file ends as an uninterrupted run's would.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ResumingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_through_epoch: int | None) -> None:
        self.keep_through_epoch = keep_through_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.keep_through_epoch is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a fresh run: Lightning's behaviour
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            header, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if not row.get("epoch") or int(float(row["epoch"])) <= self.keep_through_epoch]
        with self._fs.open(self.metrics_file_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = header


class CSVLogger(LightningCSVLogger):
    """`keep_through_epoch`: set by the pipeline when the run resumes from a checkpoint of that epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_through_epoch: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumingWriter(self.log_dir, self.keep_through_epoch)
        return self._experiment
