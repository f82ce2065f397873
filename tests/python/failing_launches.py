"""A model runner's launch that fails at random, as a device can: before the work (a launch error)
or after it (an error when the results are read). For the engine's property tests."""

from __future__ import annotations

import random


def failing_launches(launch, seed: int, before: float, after: float):
    """`launch`, failing with probability `before` before the work and `after` once it is done."""
    rng = random.Random(seed)

    def launch_or_fail(*args):
        draw = rng.random()
        if draw < before:
            raise RuntimeError("the launch failed")
        launched = launch(*args)
        if draw < before + after:
            def fail():
                raise RuntimeError("reading the results failed")
            launched.result = fail
        return launched

    return launch_or_fail
