"""Integer distributions for chat sizes and message sizes, parsed from one-line specs.

Specs (command line and JMeter-free, so they read the same in results.json)::

    "3"                 always 3
    "2-10"              uniform integer in [2, 10]
    "2:70,10:25,200:5"  weighted choice: 2 with weight 70, 10 with 25, 200 with 5
    "lognormal:200:0.8" lognormal with median 200 and sigma 0.8 (rounded, >= 1)
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True, slots=True)
class IntDistribution:
    spec: str
    values: tuple[int, ...] = ()
    cumulative: tuple[float, ...] = ()
    low: int = 0
    high: int = 0
    median: float = 0.0
    sigma: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> IntDistribution:
        text = spec.strip()
        try:
            if text.startswith("lognormal:"):
                _, median, sigma = text.split(":")
                dist = cls(spec=text, median=float(median), sigma=float(sigma))
                if dist.median <= 0 or dist.sigma < 0:
                    raise ValueError
                return dist
            if ":" in text:
                pairs = [part.split(":") for part in text.split(",")]
                values = tuple(int(v) for v, _ in pairs)
                weights = [float(w) for _, w in pairs]
                if any(w < 0 for w in weights) or sum(weights) <= 0:
                    raise ValueError
                return cls(spec=text, values=values, cumulative=tuple(accumulate(weights)))
            if "-" in text:
                low, high = (int(x) for x in text.split("-", 1))
            else:
                low = high = int(text)
        except ValueError:
            raise ValueError(f"bad distribution spec {spec!r}") from None
        if low > high or low < 0:
            raise ValueError(f"bad distribution spec {spec!r}")
        return cls(spec=text, low=low, high=high)

    def sample(self, rng: random.Random) -> int:
        if self.median:
            return max(1, round(rng.lognormvariate(math.log(self.median), self.sigma)))
        if self.values:
            x = rng.random() * self.cumulative[-1]
            return self.values[bisect.bisect_right(self.cumulative, x)]
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    @property
    def maximum(self) -> int | None:
        """The largest value it can return (None when unbounded)."""
        if self.median:
            return None
        return max(self.values) if self.values else self.high
