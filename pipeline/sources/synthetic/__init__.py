"""The embedded deterministic synthetic world: a stand-in for Earth Engine that needs no network.

The package is split by job:

* :mod:`~pipeline.sources.synthetic.fields`: seeded random streams, resampling kernels, smooth noise.
* :mod:`~pipeline.sources.synthetic.world`: the latent land-cover world of a location and its seasons.
* :mod:`~pipeline.sources.synthetic.rendering`: S2 L1C/L2A, S1 GRD and Dynamic World labels from a world.
* :mod:`~pipeline.sources.synthetic.source`: :class:`SyntheticSource`, the :class:`~pipeline.sources.base.Source`.
"""

from __future__ import annotations

from pipeline.sources.synthetic.source import MODEL_VERSION, SyntheticSource

__all__ = ["MODEL_VERSION", "SyntheticSource"]
