"""The built-in trackers, registered like any plugin's (a default plugin of the host).

Registering imports none of their libraries: each is imported when its tracker is built.
"""

from __future__ import annotations

from distil_core.hookspecs import hookimpl
from distil_core.tracking.mlflow_logger import MlflowLogger
from distil_core.tracking.tensorboard_logger import TensorBoardLogger
from distil_core.tracking.trackio_logger import TrackioLogger
from distil_core.tracking.wandb_logger import WandbLogger


BUILT_IN = {  # name: (logger class, what ``distil plugins`` says of it)
    "tensorboard": (TensorBoardLogger, "TensorBoard event files in <run_dir>/tensorboard."),
    "trackio": (TrackioLogger, "A local trackio store in <run_dir>/trackio."),
    "wandb": (WandbLogger, "An offline Weights & Biases run in <run_dir>/wandb."),
    "mlflow": (MlflowLogger, "An MLflow file store in <run_dir>/mlruns."),
}


@hookimpl
def register_loggers(register):
    for name, (logger, description) in BUILT_IN.items():
        register(name, logger, description=description)
