"""Routing profiles: which experts a model actually uses, kept per model across runs for warm starts.

A profile holds, per (layer, expert), the token-weighted usage with exponential decay (half-life
`half_life_tokens`, long: it describes the workload, not the current sentence) and the matching decayed sum of
router weights, so `router_mass / usage` is the expert's mean routing weight. The store updates one per layer
step (a vector op over the layer's experts; under an engine once the step's forward pass has succeeded, so a
failed and retried pass counts once), saves it atomically (temp file + os.replace, so a crash never leaves
half a profile) and, on the next start, seeds its eviction policy with it and reads the most used experts ahead.

File: `.npz` with `usage` and `router_mass` float64 [num_layers, num_experts], `tokens` (tokens seen),
`half_life_tokens`, and `model` (a fingerprint of config.json: a profile of another model is refused).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from kimi_local.atomic_file import write_atomic
from kimi_local.model.config import ModelConfig


class ProfileError(ValueError):
    """A profile file that cannot be used (unreadable, or of another model)."""


def model_fingerprint(config: ModelConfig) -> str:
    raw = json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def default_profile_path(model_dir: str | Path, config: ModelConfig) -> Path:
    """Where the profile of the model in `model_dir` lives: the user cache directory, one file per model."""
    name = f"{Path(model_dir).resolve().name}-{model_fingerprint(config)}.npz"
    return Path(platformdirs.user_cache_dir("kimi-local")) / "profiles" / name


@dataclass
class RoutingProfile:
    num_layers: int
    num_experts: int
    model: str = ""
    half_life_tokens: float = 4096.0
    usage: np.ndarray = field(default=None)  # type: ignore[assignment]
    router_mass: np.ndarray = field(default=None)  # type: ignore[assignment]
    tokens: float = 0.0
    first_layer: int = 0  # the first MoE layer: its steps count the tokens

    def __post_init__(self) -> None:
        shape = (self.num_layers, self.num_experts)
        if self.usage is None:
            self.usage = np.zeros(shape)
        if self.router_mass is None:
            self.router_mass = np.zeros(shape)
        if self.usage.shape != shape or self.router_mass.shape != shape:
            raise ProfileError(f"profile arrays must be {list(shape)}, got {list(self.usage.shape)} and "
                               f"{list(self.router_mass.shape)}")
        self._decay = 0.5 ** (1.0 / self.half_life_tokens)

    def record(self, layer_idx: int, expert_ids: np.ndarray, tokens: np.ndarray, router_mass: np.ndarray,
               num_tokens: int) -> None:
        """One layer step over `num_tokens` tokens: `tokens[i]` of them chose `expert_ids[i]`, with router
        weights summing to `router_mass[i]`."""
        decay = self._decay**num_tokens
        self.usage[layer_idx] *= decay
        self.router_mass[layer_idx] *= decay
        np.add.at(self.usage[layer_idx], expert_ids, tokens)
        np.add.at(self.router_mass[layer_idx], expert_ids, router_mass)
        if layer_idx == self.first_layer:
            self.tokens += num_tokens

    def top_keys(self, n: int) -> list[tuple[int, int]]:
        """The `n` most used (layer, expert) pairs, most used first (unused ones never)."""
        flat = self.usage.reshape(-1)
        n = min(n, int((flat > 0).sum()))
        if n <= 0:
            return []
        idx = np.argpartition(-flat, n - 1)[:n]
        idx = idx[np.argsort(-flat[idx], kind="stable")]
        return [divmod(int(i), self.num_experts) for i in idx]

    def reset(self) -> None:
        self.usage[:] = 0.0
        self.router_mass[:] = 0.0
        self.tokens = 0.0

    def save(self, path: str | Path) -> None:
        write_atomic(path, lambda f: np.savez(f, usage=self.usage, router_mass=self.router_mass,
                                              tokens=np.float64(self.tokens),
                                              half_life_tokens=np.float64(self.half_life_tokens),
                                              model=np.str_(self.model)))

    @classmethod
    def load(cls, path: str | Path, num_layers: int, num_experts: int, model: str = "",
             first_layer: int = 0) -> "RoutingProfile":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                usage, mass = data["usage"], data["router_mass"]
                tokens, half_life = float(data["tokens"]), float(data["half_life_tokens"])
                saved_model = str(data["model"])
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ProfileError(f"{path}: unreadable routing profile ({exc})") from None
        if model and saved_model and saved_model != model:
            raise ProfileError(f"{path}: routing profile of another model ({saved_model}, expected {model})")
        if usage.shape != (num_layers, num_experts):
            raise ProfileError(f"{path}: profile 'usage' is {list(usage.shape)}, the model has "
                               f"[{num_layers}, {num_experts}]")
        if not (np.isfinite(usage).all() and (usage >= 0).all()):
            raise ProfileError(f"{path}: profile 'usage' holds negative or non-finite values")
        return cls(num_layers, num_experts, model=model or saved_model, half_life_tokens=half_life,
                   usage=usage.astype(np.float64), router_mass=mass.astype(np.float64), tokens=tokens,
                   first_layer=first_layer)
