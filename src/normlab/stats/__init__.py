"""Population statistics of batch-dependent layers: PreciseBN, FrozenBN, batch-statistics and
example-weighed inference."""

from normlab.stats.precise_bn import update_population_stats

__all__ = ["update_population_stats"]
