"""Model zoo: a timm-style registry of FER networks built on torchvision."""

from ferkit.models import (  # noqa: F401  (registers the models)
    cnn,
    efficientnet,
    efficientnet_lite,
    mobilenet,
    resnet,
    vgg,
)
from ferkit.models.finetune import backbone_and_head
from ferkit.models.pretrained import adapt_input_conv
from ferkit.models.registry import create_model, describe_models, list_models, register_model

__all__ = [
    "adapt_input_conv",
    "backbone_and_head",
    "create_model",
    "describe_models",
    "list_models",
    "register_model",
]
