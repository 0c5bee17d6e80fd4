"""medmvl: config-first small medical vision-language models (encoder -> connector -> LLM)."""

from omegaconf import OmegaConf

from medmvl.assets import cache_dir

__version__ = "0.1.0"

# ${medmvl.cache_dir:} in configs: the one cache folder every component uses ($MEDMVL_CACHE or data/cache)
OmegaConf.register_new_resolver("medmvl.cache_dir", lambda: str(cache_dir()), replace=True)
