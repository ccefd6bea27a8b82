"""What differs between the transformers releases qasr is tested against (pyproject's range).

transformers renamed the key-value cache argument from `past_key_values` to `cache` (5.24); the old
name still works there but logs a deprecation on every start, and transformers 6 removes it. The
model's own `forward` signature says which name the installed release takes, so nothing here
depends on version numbers.
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_kwarg(model: Any) -> str:
    """The keyword the installed transformers takes for a pre-built KV cache: `cache` or `past_key_values`."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
