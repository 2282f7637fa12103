"""What is done to the model: load it, find its residual writers, capture residuals, compute
refusal directions, bake an edit in place, restore it bit-exactly, export a checkpoint.

Knows nothing of Optuna or databases.
"""

from ablation.architectures import ATTN, MLP, Writer, find_writers
from ablation.bake import Baker, BakeReport
from ablation.errors import AblationError, ModelLoadError, UnsupportedLayout
from ablation.export import export_checkpoint
from ablation.loading import LoadedModel, load_model
from ablation.profile import Kernel, Profile

__all__ = [
    "ATTN", "MLP", "AblationError", "BakeReport", "Baker", "Kernel", "LoadedModel",
    "ModelLoadError", "Profile", "UnsupportedLayout", "Writer", "export_checkpoint",
    "find_writers", "load_model",
]
