"""Settings: the frozen Config (model.py) and the one place it is merged (load.py)."""

from ..registries import DOCKER_HUB
from .load import load_config
from .model import (
    ENV_PREFIX,
    NETWORK_PATHS,
    AccessRule,
    Config,
    ConfigError,
    SharedConfig,
    UpstreamConfig,
    default_cache_dir,
    split_listen,
    upstream_from_url,
)

__all__ = [
    "DOCKER_HUB",
    "ENV_PREFIX",
    "NETWORK_PATHS",
    "AccessRule",
    "Config",
    "ConfigError",
    "SharedConfig",
    "UpstreamConfig",
    "default_cache_dir",
    "load_config",
    "split_listen",
    "upstream_from_url",
]
