"""honest_llama's head choice and directions, written out here as the independent derivation the library's plug-ins
(``RandomUnits``, ``MassMean``, ``ProbeWeights``) are checked against: get_top_heads' random draw (with iti's explicit
seed instead of the global one), get_com_directions' mean(true) - mean(false), the probes' weight vectors."""
import numpy as np


def random_heads(geometry, k, seed):
    """k heads drawn uniformly without replacement from the flat layer x head index."""
    flat = np.random.default_rng(seed).choice(geometry.num_layers * geometry.num_heads, size=k, replace=False)
    return sorted((int(i // geometry.num_heads), int(i % geometry.num_heads)) for i in flat)


def mass_mean_directions(X, y, heads):
    """mean(true) - mean(false) of each chosen head's activations, ``[K, D]`` (not normalised)."""
    y = np.asarray(y).reshape(-1)
    li, hi = np.array([l for l, _ in heads]), np.array([h for _, h in heads])
    return (np.asarray(X[y == 1][:, li, hi], np.float64).mean(axis=0)
            - np.asarray(X[y == 0][:, li, hi], np.float64).mean(axis=0))


def probe_directions(coef, heads):
    """The probes' weight vectors of the chosen heads, ``[K, D]``."""
    return np.stack([np.asarray(coef[l, h], dtype=np.float64) for l, h in heads])
