"""medmvl: config-first small medical vision-language models (encoder -> connector -> LLM)."""

from omegaconf import OmegaConf

from medmvl.assets import cache_dir

__version__ = "0.1.0"

# ${medmvl.cache_dir:} in configs: the one cache folder every component uses ($MEDMVL_CACHE or data/cache)
OmegaConf.register_new_resolver("medmvl.cache_dir", lambda: str(cache_dir()), replace=True)


def _required(key: str) -> None:
    """``${medmvl.required:key}``: a value an experiment needs from the command line (``key=...``)."""
    raise ValueError(f"{key} is required by this experiment: give {key}=... on the command line")


# ${medmvl.required:init_from} in an experiment: reading the key before the user set it is an error that
# names it (a plain ??? would be overwritten by train.yaml's default when the overlay is merged)
OmegaConf.register_new_resolver("medmvl.required", _required, replace=True)
