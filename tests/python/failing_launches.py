"""A model runner's launch that fails at random, as a device can: before the work (a launch error)
or after it (an error when the results are read); or that is interrupted (Ctrl-C) while its
sampler is being queued. For the engine's property tests."""

from __future__ import annotations

import random


def failing_launches(launch, seed: int, before: float, after: float, interrupted: float = 0.0):
    """`launch`, failing with probability `before` before the work and `after` once it is done, and
    raising KeyboardInterrupt from the step's sampling with probability `interrupted`."""
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
        elif draw < before + after + interrupted and launched.sample_inputs is not None:
            def interrupt(*args, **kwargs):
                raise KeyboardInterrupt
            launched.sample_inputs.sampler = interrupt
        return launched

    return launch_or_fail
