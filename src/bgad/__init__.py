"""bgad: supervised industrial anomaly detection with BGAD (Yao et al., CVPR 2023, arXiv 2207.01463)."""

from ._version import __version__
from .config import BGADConfig, LossConfig, ModelConfig, TrainConfig, load_config
from .detector import BGAD
from .errors import BGADError, NotFittedError
from .inference import Prediction
from .method.backbones import create_backbone, list_backbones
from .method.model import BGADModel

__all__ = [
    "BGAD",
    "BGADConfig",
    "BGADError",
    "BGADModel",
    "LossConfig",
    "ModelConfig",
    "NotFittedError",
    "Prediction",
    "TrainConfig",
    "__version__",
    "create_backbone",
    "list_backbones",
    "load_config",
]
