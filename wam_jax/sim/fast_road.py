"""Faster highway-env physics with the same results: where a 30-vehicle step spends its time.

Profiled on one closed-loop episode (highway-env 1.12.1), 70% of a step is two O(N^2) loops of `Road`:

* `neighbour_vehicles` (IDM and MOBIL ask it ~37 times a step) projects every vehicle on the queried lane each
  time. Between two physics steps no vehicle moves, so the projections of each lane are computed once per step
  here and every query scans that list, in the same order, with the same comparisons.
* `step` calls `handle_collisions` on every pair. A pair whose centres are further apart than
  `_is_colliding`'s own spherical pre-check allows returns without any effect, so pairs are pre-filtered here
  with a looser bound (1 m wider) in one vectorised distance matrix, and the survivors go through the original
  `handle_collisions` in the original order.

Both are exact: `tests/test_sim_highway.py` drives the same episodes with and without them and compares every
pose bit for bit. They are installed only over the `Road` methods they were written against (checked by source
hash), so another highway-env version keeps its own code.

    python -m wam_jax.sim.fast_road [--seeds 4] [--steps 240]   # times expert clips both ways, prints a table
"""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
from highway_env.road.road import Road
from highway_env.vehicle.objects import Landmark, RoadObject

ORIGINAL = {"neighbour_vehicles": Road.neighbour_vehicles, "step": Road.step}
# sha1 of the source of the methods replaced here, as highway-env 1.12.1 ships them.
KNOWN_SOURCE = {"neighbour_vehicles": "f7469af80e6f505aa6dd818f040638dba2b637e6",
                "step": "235cc416cd5f51365666df92a7f335af5991b353"}
_CACHE = "_wam_lane_occupants"
_PRECHECK_SLACK_M = 1.0


def source_hash(fn) -> str:
    return hashlib.sha1(inspect.getsource(fn).encode()).hexdigest()


def _lane_occupants(road: Road, lane_index) -> list:
    """[(object, s)] of `road.vehicles + road.objects` on the lane (1 m margin, as `neighbour_vehicles` asks),
    in road order; cached until the next `Road.step` or a change in the number of vehicles or objects."""
    cache = road.__dict__.get(_CACHE)
    stamp = (len(road.vehicles), len(road.objects))
    if cache is None or cache[0] != stamp:
        cache = (stamp, {})
        road.__dict__[_CACHE] = cache
    key = tuple(lane_index)
    found = cache[1].get(key)
    if found is None:
        lane = road.network.get_lane(lane_index)
        found = []
        for v in road.vehicles + road.objects:
            if isinstance(v, Landmark):
                continue
            s_v, lat_v = lane.local_coordinates(v.position)
            if lane.on_lane(v.position, s_v, lat_v, margin=1):
                found.append((v, s_v))
        cache[1][key] = found
    return found


def neighbour_vehicles(self: Road, vehicle, lane_index=None):
    """`Road.neighbour_vehicles` (preceding, following) from the per-step lane occupancy."""
    if self.neighbour_vehicles_connected_lanes:
        return ORIGINAL["neighbour_vehicles"](self, vehicle, lane_index)
    lane_index = lane_index or vehicle.lane_index
    if not lane_index:
        return None, None
    s = self.network.get_lane(lane_index).local_coordinates(vehicle.position)[0]
    s_front = s_rear = None
    v_front = v_rear = None
    for v, s_v in _lane_occupants(self, lane_index):
        if v is vehicle:
            continue
        if s <= s_v and (s_front is None or s_v <= s_front):
            s_front, v_front = s_v, v
        if s_v < s and (s_rear is None or s_v > s_rear):
            s_rear, v_rear = s_v, v
    return v_front, v_rear


def step(self: Road, dt: float) -> None:
    """`Road.step`: every vehicle moves, then collisions, checking only the pairs that can touch."""
    vehicles = self.vehicles
    for vehicle in vehicles:
        vehicle.step(dt)
    self.__dict__.pop(_CACHE, None)     # the vehicles moved: every lane's occupancy is stale
    pos = np.array([v.position for v in vehicles], dtype=np.float64).reshape(-1, 2)
    half = np.array([v.diagonal for v in vehicles], dtype=np.float64) / 2
    reach = np.array([abs(v.speed) for v in vehicles], dtype=np.float64) * abs(dt)
    dist = np.sqrt(np.sum((pos[:, None, :] - pos[None, :, :]) ** 2, axis=-1))
    near = dist <= half[:, None] + half[None, :] + reach[:, None] + _PRECHECK_SLACK_M
    # Only RoadObject's own collision code is known to do nothing beyond that distance.
    custom = np.array([type(v).handle_collisions is not RoadObject.handle_collisions
                       or type(v)._is_colliding is not RoadObject._is_colliding for v in vehicles], dtype=bool)
    near |= custom[:, None] | custom[None, :]
    for i, vehicle in enumerate(vehicles):
        for j in np.flatnonzero(near[i, i + 1:]) + i + 1:
            vehicle.handle_collisions(vehicles[j], dt)
        for other in self.objects:
            vehicle.handle_collisions(other, dt)


def reproducible() -> bool:
    """Whether the installed highway-env's `Road` methods are the ones this module reproduces."""
    try:
        return all(source_hash(ORIGINAL[name]) == KNOWN_SOURCE[name] for name in ORIGINAL)
    except (OSError, TypeError):        # no source to read (e.g. a frozen install)
        return False


def install() -> bool:
    """Replaces the `Road` methods if they are the ones this module reproduces; returns whether it did."""
    if not reproducible():
        return False
    Road.neighbour_vehicles = neighbour_vehicles
    Road.step = step
    return True


def uninstall() -> None:
    """Puts highway-env's own methods back (tests compare both)."""
    for name, fn in ORIGINAL.items():
        setattr(Road, name, fn)


def benchmark(seeds: int = 4, steps: int = 240) -> str:
    """Drives `seeds` expert clips of `steps` control steps (the demo's simulator: 30 vehicles) with highway-env's
    own `Road` methods and with these; a table of the times and whether every pose is identical."""
    import time

    from wam_jax.sim import highway as hw
    from wam_jax.tools.tables import format_table

    cfg = hw.HighwaySimConfig(vehicles=30, duration_s=steps / 10 + 5)
    runs = {}
    for name, setup in (("highway-env Road", uninstall), ("fast_road", install)):
        setup()
        start = time.perf_counter()
        runs[name] = ([hw.record_expert_episode(cfg, s, steps=steps, render=False).poses for s in range(seeds)],
                      time.perf_counter() - start)
    install()
    same = all(np.array_equal(a, b) for a, b in zip(runs["highway-env Road"][0], runs["fast_road"][0]))
    rows = [[name, f"{t:.2f}", f"{seeds * steps / t:.0f}"] for name, (_, t) in runs.items()]
    return (format_table(["road methods", "seconds", "env steps/s"], rows)
            + f"\n{seeds} expert clips x {steps} steps, 30 vehicles; poses identical: {same}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m wam_jax.sim.fast_road", description=benchmark.__doc__)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=240)
    args = parser.parse_args()
    from wam_jax.sim import fast_road      # the installed module, not this __main__ copy
    print(fast_road.benchmark(args.seeds, args.steps))
