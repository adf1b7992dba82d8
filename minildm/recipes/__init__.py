"""The notebooks' experiments: presets, one recipe module per notebook, the artifact registry and store.

* :mod:`minildm.recipes.presets`: ``smoke`` / ``cpu`` / ``gpu`` sizes of every recipe
* :mod:`minildm.recipes.registry`: ``@register("name")`` and the spec interface
* :mod:`minildm.recipes.store`: ``load_or_train``, ``build_artifact``, ``load_artifact``: the cache on disk
* :mod:`minildm.recipes.autoencoder`: first stages ``ae-{kl,vq}-{variant}`` (notebook 01)
* :mod:`minildm.recipes.ablation`: ``ae-kl-f{f}``, the downsampling-factor ablation (notebook 02)
* :mod:`minildm.recipes.feature_net`, :mod:`minildm.recipes.checker`: the measuring networks (notebooks 02–05)
* :mod:`minildm.recipes.ldm`: ``ldm-f{f}``, pixel vs latent at equal compute (notebook 03)
* :mod:`minildm.recipes.first_stage`: ``kl-f{f}``, the first stage of the conditional models (notebooks 04, 05)
* :mod:`minildm.recipes.conditional`: ``ldm-class``, ``ldm-layout`` (notebook 04)
* :mod:`minildm.recipes.text_to_image`: ``t2i-{encoder}-{size}`` and the scaling study (notebook 05)
* :mod:`minildm.recipes.image_to_image`: ``ldm-sr``, ``ldm-inpaint``, ``ldm-semantic``, ``pdm-inpaint`` (notebook 06)
* :mod:`minildm.recipes.asymmetric_decoder`: ``kl-f4-photos-asym``, the inpainting model's decoder (notebook 06)

Importing this package imports every recipe module, which registers its artifacts.
"""
from . import (ablation, asymmetric_decoder, autoencoder, checker, conditional, feature_net, first_stage,
               image_to_image, ldm, text_to_image)
from .registry import ARTIFACTS, get_spec, list_artifacts, register
from .store import Artifact, build_artifact, load_artifact, load_or_train, reevaluate_artifact

__all__ = ["ARTIFACTS", "Artifact", "ablation", "asymmetric_decoder", "autoencoder", "build_artifact", "checker", "conditional",
           "feature_net", "first_stage", "get_spec", "image_to_image", "ldm", "list_artifacts", "load_artifact", "load_or_train",
           "reevaluate_artifact", "register", "text_to_image"]
