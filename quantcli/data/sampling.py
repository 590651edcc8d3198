"""Which samples ``--samples N`` uses (:class:`~quantcli.data.config.SampleBy`), and the class histogram of them.

* ``random``: N indices drawn without replacement with ``numpy.random.default_rng(seed)``, in data order.
* ``class``: balanced per class: N split evenly over the classes present (the remainder to the lowest class
  ids), a class with fewer samples than its share gives the rest to the others (round-robin in class order);
  within each class the samples are drawn as for random, with the same seed.  Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuantcliError
from .config import SampleBy


def choose(total: int, n: int | None, by: SampleBy, labels: np.ndarray | None, seed: int, where: str
           ) -> np.ndarray | None:
    """Sorted indices of the chosen samples, or None for the first ``n`` (streamed as before)."""
    if by == SampleBy.CLASS and labels is None:
        raise QuantcliError(f"{where}: --sample-by class needs labels: class sub-folders, a 'labels' array, "
                            "or a labels field")
    if by == SampleBy.FIRST or n is None and by == SampleBy.RANDOM:
        return None
    n = total if n is None else min(n, total)
    rng = np.random.default_rng(seed)
    if by == SampleBy.RANDOM:
        return np.sort(rng.choice(total, size=n, replace=False))
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    quota = quotas([len(m) for m in members], n)
    picked = [rng.permutation(m)[:q] for m, q in zip(members, quota)]
    return np.sort(np.concatenate(picked))


def quotas(sizes: list[int], n: int) -> list[int]:
    """Samples per class: as even as the class sizes allow, summing to min(n, sum(sizes))."""
    q = [0] * len(sizes)
    left = min(n, sum(sizes))
    while left:
        open_ = [i for i, s in enumerate(sizes) if q[i] < s]
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, sizes[i] - q[i], left)
            q[i] += take
            left -= take
            if not left:
                break
    return q


def histogram(labels: np.ndarray | None, names: list[str]) -> dict[str, int] | None:
    """Samples per class (by folder name where there are class folders, else by class id), in class order."""
    if labels is None:
        return None
    ids, counts = np.unique(labels, return_counts=True)
    out = {name: 0 for name in names}
    out.update({(names[i] if i < len(names) else str(i)): int(c) for i, c in zip(ids.tolist(), counts.tolist())})
    return out
