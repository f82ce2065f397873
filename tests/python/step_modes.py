"""The engine's three ways to step, taken on a CPU (engine.py): "plain" (a step is scheduled,
computed and applied in one call), "overlapped" (the runner marked asynchronous, as a GPU's: a
step's tokens are applied by the next call, after it launched the next step) and "ahead" (async
scheduling: the next step is scheduled and launched before the last one's tokens are applied);
and a count of the rows an engine scheduling ahead retracts."""

from __future__ import annotations

from kvserve import Engine

STEP_MODES = ["plain", "overlapped", "ahead"]


def set_step_mode(engine: Engine, mode: str) -> Engine:
    if mode not in STEP_MODES:
        raise ValueError(f"mode: expected one of {STEP_MODES}, got {mode!r}")
    engine.runner.asynchronous = mode == "overlapped"
    engine.async_scheduling = mode == "ahead"
    return engine


def count_retracts(engine: Engine) -> list:
    """The sequences whose rows `engine` retracts from now on (Engine._retract), one entry per row."""
    retract, retracted = engine._retract, []

    def counted(*args):
        rows = retract(*args)
        retracted.extend(rows)
        return rows

    engine._retract = counted
    return retracted
