"""Loading an open_clip model from settings, and the pure encode functions.

torch and open_clip are imported here, and this module is imported only by the
Embedder replicas (and tests), never by modules every actor loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deeplens.settings import ModelSettings
from deeplens.vectors.base import is_random_init

log = logging.getLogger(__name__)

TINY_MODEL = "deeplens-tiny"
RANDOM = "random"
_CONFIG_DIR = Path(__file__).parent / "model_configs"


class ModelLoadError(RuntimeError):
    """The configured weights could not be loaded; the message says what to do."""


@dataclass
class ClipModel:
    """A loaded model and everything that must match it."""

    model: Any
    tokenizer: Any
    preprocess: Any  # open_clip's own PIL -> tensor transform
    model_id: str  # "<arch>/<pretrained>" or "<arch>/random-init-seed<N>"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype
    embed_dim: int

    @property
    def random_init(self) -> bool:
        return is_random_init(self.model_id)


def register_configs() -> None:
    """Make DeepLens' own architectures (the tiny test model) known to open_clip."""
    import open_clip

    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


MODEL_ID_WIDTH = 128  # images.feature_model is VARCHAR(128)


def model_identity(settings: ModelSettings) -> str:
    """The id every vector of this model carries; vectors of different ids never mix.
    Longer than the catalog's column is refused at start, naming the settings."""
    model_id = _identity(settings)
    if len(model_id) > MODEL_ID_WIDTH:
        raise ValueError(
            f"the model id {model_id[:60]!r}... is {len(model_id)} characters; the catalog "
            f"holds {MODEL_ID_WIDTH}: shorten DEEPLENS_MODEL__NAME / DEEPLENS_MODEL__PRETRAINED")
    return model_id


def _identity(settings: ModelSettings) -> str:
    if settings.pretrained == RANDOM:
        # The seed is part of the id: every start and every replica with this id has the
        # very same weights, and another seed never mixes its vectors with these.
        return f"{settings.name}/random-init-seed{settings.random_seed}"
    path = Path(settings.pretrained)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"{settings.name}/file-{path.stem}-{digest.hexdigest()[:12]}"
    return f"{settings.name}/{settings.pretrained}"


def load_clip(settings: ModelSettings, device: str | None = None) -> ClipModel:
    """Build the configured model; fail loudly unless random weights were asked for."""
    import open_clip

    register_configs()
    if settings.name not in open_clip.list_models():
        raise ModelLoadError(f"unknown open_clip architecture {settings.name!r} "
                             "(DEEPLENS_MODEL__NAME); see open_clip.list_models()")
    if not settings.allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"  # the cache and local files only
    dev = pick_device(device)
    dtype = pick_dtype(settings.precision, dev)
    pretrained = None if settings.pretrained == RANDOM else settings.pretrained
    try:
        # Random initialisation is seeded (on the CPU, then moved), so it is the same on
        # every start and every replica; the caller's RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.random_seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                settings.name, pretrained=pretrained, device="cpu",
                require_pretrained=bool(pretrained),
                cache_dir=os.environ.get("DEEPLENS_MODEL_CACHE") or None,
            )
        model = model.to(dev)
    except Exception as exc:  # noqa: BLE001 - every loader failure gets the same advice
        raise ModelLoadError(
            f"could not load weights {settings.pretrained!r} for {settings.name}: {exc}. "
            "Fetch them once (DEEPLENS_MODEL__ALLOW_DOWNLOAD=true), point "
            "DEEPLENS_MODEL__PRETRAINED at a weights file, or set "
            "DEEPLENS_MODEL__PRETRAINED=random to run with random weights (its vectors are "
            "labelled random-init and are meaningless for search)."
        ) from exc
    model = model.to(dtype=dtype).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    model_id = model_identity(settings)
    if pretrained is None:
        log.warning("*" * 72 + "\nRANDOM WEIGHTS: %s has no pretrained weights; its vectors "
                    "are labelled %s and mean nothing for search.\n" + "*" * 72,
                    settings.name, model_id)
    return ClipModel(
        model=model, tokenizer=open_clip.get_tokenizer(settings.name), preprocess=preprocess,
        model_id=model_id, image_size=size[0] if isinstance(size, tuple | list) else int(size),
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),  # type: ignore[arg-type]
        device=dev, dtype=dtype, embed_dim=int(model.visual.output_dim),
    )


def weights_available(settings: ModelSettings) -> bool:
    """Whether ``load_clip`` would find the weights without a download."""
    import open_clip

    if settings.pretrained == RANDOM or Path(settings.pretrained).is_file():
        return True
    register_configs()
    cfg = open_clip.get_pretrained_cfg(settings.name, settings.pretrained)
    if not cfg:
        return False
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    _hub_offline(True)
    try:
        open_clip.download_pretrained(cfg, cache_dir=os.environ.get("DEEPLENS_MODEL_CACHE"))
        return True
    except Exception:  # noqa: BLE001 - not in the cache
        return False
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
        _hub_offline(previous not in (None, "", "0"))


def _hub_offline(offline: bool) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: set its constant as well."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = offline


@torch.inference_mode()
def encode_images(clip: ClipModel, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised image embeddings (float32, on the CPU) of a preprocessed batch."""
    pixels = pixels.to(clip.device, dtype=clip.dtype, non_blocking=True)
    return clip.model.encode_image(pixels, normalize=True).float().cpu()


@torch.inference_mode()
def encode_texts(clip: ClipModel, texts: list[str]) -> torch.Tensor:
    tokens = clip.tokenizer(texts).to(clip.device)
    return clip.model.encode_text(tokens, normalize=True).float().cpu()


def encode_with_split(clip: ClipModel, pixels: torch.Tensor) -> list[torch.Tensor | Exception]:
    """Encode a batch; on CUDA out-of-memory split it in halves and retry each half.

    Returns one embedding or one exception per row, so a single row that does not
    fit fails alone.
    """
    try:
        return list(encode_images(clip, pixels))
    except torch.cuda.OutOfMemoryError as exc:
        if clip.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(pixels) == 1:
            return [exc]
        half = len(pixels) // 2
        log.warning("CUDA out of memory at batch %d; splitting into %d + %d",
                    len(pixels), half, len(pixels) - half)
        return encode_with_split(clip, pixels[:half]) + encode_with_split(clip, pixels[half:])
