"""Split a model's parameters into backbone and head, for freezing and per-group learning rates."""

from torch import nn


def is_head_key(key: str, classifier: str) -> bool:
    """Whether a parameter/state-dict key belongs to the head module named ``classifier``."""
    return key == classifier or key.startswith(classifier + ".")


def backbone_and_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Return ``(backbone_params, head_params)`` of a model from ``create_model``.

    The head is the module named by ``model.default_cfg["classifier"]`` (the layers replaced for
    ``num_classes``); everything else is backbone. A trainer can set ``requires_grad=False`` on the backbone
    for the first epochs, then give it its own, lower learning rate in a separate optimizer param group.
    """
    classifier = model.default_cfg["classifier"]
    backbone, head = [], []
    for key, param in model.named_parameters():
        (head if is_head_key(key, classifier) else backbone).append(param)
    return backbone, head
