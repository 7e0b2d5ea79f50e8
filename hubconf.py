"""torch.hub entry points.

    model = torch.hub.load("<owner>/<repo>", "encoder", name="lite")     # the offline lite encoder
    model = torch.hub.load("<owner>/<repo>", "encoder", name="hf:openai/clip-vit-base-patch32")
"""
dependencies = ["torch", "numpy", "PIL", "safetensors"]

from encoders import available_models, load  # noqa: E402


def encoder(name: str = "lite", device: str = "auto", **kwargs):
    """An image/text encoder (see encoders.available_models()); `encode_images`, `encode_texts`, `preprocess`."""
    return load(name, device, **kwargs)


def lite(device: str = "auto", **kwargs):
    """The offline lite dual encoder with the shipped projection heads."""
    return load("lite", device, **kwargs)


__all__ = ["encoder", "lite", "available_models"]
