"""wam_jax.metrics: planning metrics in numpy (NAVSIM PDMS/EPDMS-lite, PhysicalAI-AV/Alpamayo distances)."""

from wam_jax.metrics.navsim import EPDMSResult, PDMSResult, epdms, pdms, score_states
from wam_jax.metrics.navsim_scene import (
    EgoState,
    HumanPast,
    MapLayer,
    MapPolygon,
    NavsimScene,
    ObjectBox,
    PreviousFrame,
    Reference,
    VehicleParams,
)
from wam_jax.metrics.trajectory import ade, distance_metrics, fde, min_ade, min_fde

__all__ = [
    "EPDMSResult", "PDMSResult", "epdms", "pdms", "score_states",
    "EgoState", "HumanPast", "MapLayer", "MapPolygon", "NavsimScene", "ObjectBox", "PreviousFrame", "Reference",
    "VehicleParams",
    "ade", "distance_metrics", "fde", "min_ade", "min_fde",
]
