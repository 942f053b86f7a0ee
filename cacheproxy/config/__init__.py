"""Settings: the frozen Config (model.py), the table of every setting read from it
(table.py), and the one place they are merged (load.py)."""

from ..registries import DOCKER_HUB
from .fields import ENV_PREFIX, ConfigError
from .load import load_config
from .model import AccessRule, Config, default_cache_dir, split_listen
from .policy import PolicyRule
from .shared import SharedConfig
from .upstreams import NETWORK_PATHS, UpstreamConfig, upstream_from_url

__all__ = [
    "DOCKER_HUB",
    "ENV_PREFIX",
    "NETWORK_PATHS",
    "AccessRule",
    "Config",
    "ConfigError",
    "PolicyRule",
    "SharedConfig",
    "UpstreamConfig",
    "default_cache_dir",
    "load_config",
    "split_listen",
    "upstream_from_url",
]
