"""The price table: USD for the tokens of tools that report tokens but no USD.

The table ships as package data (``prices.json``, with a ``version``) and a
spec may override or extend it with ``model_prices``. A model is priced by
its exact name, else by the longest table key it starts with
(``claude-sonnet-4-5-20250929`` → ``claude-sonnet-4-5``), after dropping a
provider prefix (``anthropic/``, ``openai/`` …). Spec entries win over shipped
ones. Every computed cost carries the version of what priced it: the shipped
table's ``version``, or ``spec`` for a ``model_prices`` entry.

Normalized tokens (see :class:`TokenCounts`): ``input`` counts every prompt
token, cached or not; ``cache_read`` and ``cache_write`` are the parts of it
read from and written to a prompt cache; ``output`` includes reasoning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from longrun.errors import LongrunError
from longrun.spec.models import ModelPrice

__all__ = ["Price", "TokenCounts", "compute_usd", "price_for", "shipped_prices"]

_MTOK = 1_000_000


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float
    cache_write: float
    #: What priced it: the shipped table's version, or "spec".
    version: str


@dataclass(frozen=True)
class TokenCounts:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0


@lru_cache(maxsize=1)
def shipped_prices() -> tuple[str, dict[str, ModelPrice]]:
    """``(version, model → price)`` of the table shipped with longrun."""
    raw = json.loads(resources.files("longrun.execution").joinpath("prices.json").read_text(encoding="utf-8"))
    return str(raw["version"]), {name: ModelPrice.model_validate(p) for name, p in raw["models"].items()}


def _lookup(model: str, table: Mapping[str, ModelPrice]) -> ModelPrice | None:
    if model in table:
        return table[model]
    best = max((k for k in table if model.startswith(k)), key=len, default=None)
    return table[best] if best is not None else None


def price_for(model: str, overrides: Mapping[str, ModelPrice] | None = None) -> Price | None:
    """The price of ``model`` (spec overrides first, then the shipped table), or None if unknown."""
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])
    version, shipped = shipped_prices()
    for table, label in ((overrides or {}, "spec"), (shipped, version)):
        for name in names:
            p = _lookup(name, table)
            if p is not None:
                return Price(
                    input=p.input,
                    output=p.output,
                    cache_read=p.input if p.cache_read is None else p.cache_read,
                    cache_write=p.input if p.cache_write is None else p.cache_write,
                    version=label,
                )
    return None


def compute_usd(model: str, tokens: TokenCounts, overrides: Mapping[str, ModelPrice] | None = None) -> tuple[float, str]:
    """``(usd, price version)`` for ``tokens`` of ``model``; ``usage_unpriced`` when the model has no price."""
    price = price_for(model, overrides)
    if price is None:
        raise LongrunError(
            f"no price for model {model!r}: its tool reports tokens but no USD; add it to the spec's model_prices "
            f"(USD per million tokens) so its cost can be counted",
            code="usage_unpriced",
        )
    uncached = max(0, tokens.input - tokens.cache_read - tokens.cache_write)
    usd = (
        uncached * price.input
        + tokens.cache_read * price.cache_read
        + tokens.cache_write * price.cache_write
        + tokens.output * price.output
    ) / _MTOK
    return round(usd, 9), price.version
