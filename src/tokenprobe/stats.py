"""Small statistics shared by analyses and figures."""

from __future__ import annotations

import numpy as np


def wilson(successes: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of successes / n (95% by default); n = 0 gives (0, 1)."""
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(successes, dtype=np.float64)
    safe = np.where(n > 0, n, 1.0)
    p = k / safe
    denom = 1 + z**2 / safe
    centre = (p + z**2 / (2 * safe)) / denom
    half = z * np.sqrt(p * (1 - p) / safe + z**2 / (4 * safe**2)) / denom
    low = np.where(n > 0, centre - half, 0.0)
    high = np.where(n > 0, centre + half, 1.0)
    return np.clip(low, 0, 1), np.clip(high, 0, 1)
