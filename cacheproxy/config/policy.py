"""The [[policy]] tables: which repositories need a signature, by which keys, and
what is done when an image has none (cacheproxy/policy/ applies them)."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import ConfigError, setting, settings_of

MODES = ("enforce", "warn", "audit")
REQUIREMENTS = ("cosign",)
# Policies at most: each is a label of /metrics, and is asked on every manifest.
MAX_POLICIES = 64
MAX_KEYS = 32


@dataclass(frozen=True)
class PolicyRule:
    """A [[policy]] table: manifests served under ``repositories`` need a cosign
    signature by one of ``keys``."""

    repositories: tuple[str, ...] = setting(
        (), "upstream/repository globs it holds for, matched as [[access]] matches them"
    )
    require: str = setting("cosign", 'what a manifest needs: "cosign" (a signature by a key)')
    keys: tuple[str, ...] = setting(
        (), "PEM public key files (ECDSA P-256, Ed25519, RSA), re-read when they change"
    )
    mode: str = setting(
        "enforce", "enforce: refuse (403 DENIED); warn: serve, log, count; audit: count"
    )
    per_platform: bool = setting(
        False, "an index not signed itself is served, and each platform manifest then checked"
    )
    name: str | None = setting(None, "its label in /metrics and messages", shown="its position")

    def label(self, position: int) -> str:
        """What /metrics and messages call it."""
        return self.name or str(position)


POLICY = settings_of(PolicyRule, table="policy", env_prefix=None)


def policies_from_toml(raw: object) -> tuple[PolicyRule, ...] | None:
    """The [[policy]] tables, checked; a key a table leaves out takes its default."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_POLICIES:
        raise ConfigError(f"policy: expected at most {MAX_POLICIES} [[policy]] tables")
    keys = [s.key for s in POLICY]
    rules = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - set(keys):
            raise ConfigError(f"[[policy]]: keys are {', '.join(keys)}")
        rules.append(_rule(position, item))
    labels = [rule.label(i) for i, rule in enumerate(rules)]
    if len(labels) != len(set(labels)):
        raise ConfigError("[[policy]]: two policies share a name")
    return tuple(rules)


def _rule(position: int, item: dict[str, object]) -> PolicyRule:
    where = f"[[policy]] {item.get('name') or position}"
    typed: dict[str, object] = {}
    for key in ("repositories", "keys"):
        value = item.get(key, [])
        values = [value] if isinstance(value, str) else value
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            raise ConfigError(f"{where}: {key} must be a non-empty list of strings")
        typed[key] = tuple(values)
    if len(typed["keys"]) > MAX_KEYS:  # type: ignore[arg-type]
        raise ConfigError(f"{where}: at most {MAX_KEYS} keys")
    for key, allowed in (("require", REQUIREMENTS), ("mode", MODES)):
        if key in item:
            if item[key] not in allowed:
                raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}")
            typed[key] = item[key]
    if "per_platform" in item:
        if not isinstance(item["per_platform"], bool):
            raise ConfigError(f"{where}: per_platform must be true or false")
        typed["per_platform"] = item["per_platform"]
    if "name" in item:
        name = item["name"]
        if not isinstance(name, str) or not name or len(name) > 64 or not name.isprintable():
            raise ConfigError(f"{where}: name must be a short printable string")
        typed["name"] = name
    return PolicyRule(**typed)  # type: ignore[arg-type]
