"""AsyncEngine: the Engine on a thread of its own, fed by HTTP handlers on the event loop.

    event loop (handlers)                               engine thread (owns the Engine)
    submit() ── ("add", ...) ──► commands queue ──►     add_request / abort
    stream.close() ── ("abort", ids) ──►                step() ──► outputs (DELTA)
    RequestStream queues ◄── call_soon_threadsafe(_deliver, outputs) ◄──┘

Every Engine call happens on the engine thread, so the Engine needs no locks. The thread blocks on
the commands queue while there is nothing to run, and steps back to back while there is. What the
handlers read about the engine (running/waiting counts, KV usage) is the `snapshot` the thread
publishes after each round, replaced whole so that a reader never sees half of one.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from kvserve.engine import Engine
from kvserve.lora import LoRARequest
from kvserve.outputs import RequestOutput
from kvserve.pooling import PoolingParams
from kvserve.sampling_params import SamplingParams

logger = logging.getLogger("kvserve.server")

_STOP = ("stop",)

# Enough for a burst of a thousand requests (vLLM's benchmark default) on top of a full batch.
DEFAULT_MAX_WAITING = 1024


def num_seqs(params: SamplingParams | PoolingParams) -> int:
    """The batch places a request takes: n samples, one for a pooled prompt."""
    return params.n if isinstance(params, SamplingParams) else 1


class QueueFullError(Exception):
    """More requests are waiting than the server accepts (HTTP 503)."""


class EngineStoppedError(Exception):
    """The engine stopped (server shutdown) before the request finished."""


@dataclass(frozen=True)
class EngineSnapshot:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    num_running_seqs: int = 0  # the batch's places in use (a request of n samples takes n)
    num_seqs_added: int = 0  # sequences (n a prompt) of the add commands taken so far, accepted or not
    running_loras: tuple[str, ...] = ()  # adapters of running requests (Engine.lora_requests)
    waiting_loras: tuple[str, ...] = ()  # and of waiting ones
    # Speculative decoding's totals (SchedulerStats): rows with drafts, drafts, drafts accepted (by position).
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: tuple[int, ...] = ()


@dataclass(frozen=True)
class EnginePrompt:
    """One prompt as the HTTP side hands it over: token ids, and the text when there was one."""

    token_ids: list[int]
    text: str | None = None


class StepObserver:
    """What the engine thread reports as it goes (the Prometheus metrics implement it)."""

    def on_add(self, params: SamplingParams | PoolingParams) -> None:
        pass

    def on_step(self, outputs: list[RequestOutput], now: float, num_tokens: int) -> None:
        """`num_tokens`: those of the step the engine launched (0: none)."""

    def on_abort(self, request_ids: Sequence[str]) -> None:
        pass


class RequestStream:
    """The outputs of the engine requests behind one HTTP request (one per prompt), in the order the
    engine produced them: `async for prompt_index, output in stream`. Each output is a DELTA.
    close() aborts whatever has not finished; call it in a `finally`."""

    def __init__(self, engine: AsyncEngine, request_ids: list[str]):
        self.request_ids = request_ids
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._unfinished = set(request_ids)

    def _put(self, item) -> None:
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        while self._unfinished:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            prompt_index, output = item
            if output.finished:
                self._unfinished.discard(output.request_id)
                self._engine._streams.pop(output.request_id, None)
            yield prompt_index, output

    def close(self) -> None:
        if self._unfinished:
            self._engine._abort(sorted(self._unfinished))
            self._unfinished.clear()


class AsyncEngine:
    """Runs `engine` on a background thread. start() on the event loop that will call submit();
    shutdown() aborts what is left and joins the thread.

    max_waiting: the most requests (prompts) accepted but not yet running; submit() raises
    QueueFullError beyond it rather than letting the queue grow without bound.
    """

    def __init__(self, engine: Engine, *, max_waiting: int, observer: StepObserver | None = None):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
        self.snapshot = EngineSnapshot()
        self._observer = observer or StepObserver()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[RequestStream, int]] = {}  # touched on the event loop only
        self._num_submitted_seqs = 0  # sequences (n a prompt) submitted, counted on the event loop
        self._num_added_seqs = 0  # sequences taken by the engine thread, counted there
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._shutdown: asyncio.Future | None = None

    # ---- the event loop's side ----------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._publish()
        self._thread = threading.Thread(target=self._run, name="kvserve-engine", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        """Started, not stopping, and the thread alive (it only ends on shutdown)."""
        return self._shutdown is None and self._thread is not None and self._thread.is_alive()

    @property
    def num_waiting(self) -> int:
        """Requests accepted but not running: those waiting in the scheduler, and those not yet taken
        by the thread beyond the batch's free places (which the others can take at once). Counted
        in sequences past those places, so a request of n samples counts n: never fewer than wait."""
        return self._waiting_with(self.snapshot, 0)

    @property
    def max_accepted_seqs(self) -> int:
        """The most sequences one submit() can ever bring: the batch's places and the waiting room."""
        return self.engine.max_num_seqs + self.max_waiting

    def _waiting_with(self, snapshot: EngineSnapshot, new_seqs: int) -> int:
        untaken = self._num_submitted_seqs - snapshot.num_seqs_added + new_seqs
        # With requests waiting in the scheduler, a place that frees goes to them first.
        free = 0 if snapshot.num_waiting else max(0, self.engine.max_num_seqs - snapshot.num_running_seqs)
        return snapshot.num_waiting + max(0, untaken - free)

    def submit(self, request_id: str, prompts: Sequence[EnginePrompt], params: SamplingParams | PoolingParams,
               lora_request: LoRARequest | None = None, cache_salt: str | None = None,
               priority: int = 0) -> RequestStream:
        """Queue one engine request per prompt (ids `{request_id}-{i}`), streaming DELTA outputs (a
        pooling engine's: each request's PoolingRequestOutput);
        `lora_request`: the LoRA adapter they run with; `cache_salt`: their prefix-cache salt;
        `priority`: the engine's (scheduling_policy "priority").
        Raises QueueFullError when they do not fit under max_waiting, EngineStoppedError after shutdown."""
        if not self.is_running:
            raise EngineStoppedError("the engine is not running")
        snapshot = self.snapshot
        if self._waiting_with(snapshot, len(prompts) * num_seqs(params)) > self.max_waiting:
            raise QueueFullError(f"{self._waiting_with(snapshot, 0)} requests are already waiting (the limit is "
                                 f"{self.max_waiting})")
        stream = RequestStream(self, [f"{request_id}-{i}" for i in range(len(prompts))])
        arrival_time = time.time()
        for i, (engine_id, prompt) in enumerate(zip(stream.request_ids, prompts)):
            self._streams[engine_id] = (stream, i)
            self._num_submitted_seqs += num_seqs(params)
            engine_prompt = {"prompt_token_ids": prompt.token_ids, "prompt": prompt.text}
            if cache_salt is not None:
                engine_prompt["cache_salt"] = cache_salt
            self._commands.put(("add", engine_id, engine_prompt, params, arrival_time, lora_request, priority))
        return stream

    def drop_lora(self, lora_int_id: int) -> None:
        """Let the engine drop a LoRA adapter the server no longer serves (on its thread, between steps)."""
        self._commands.put(("drop_lora", lora_int_id))

    def _abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._streams.pop(request_id, None)
        self._commands.put(("abort", request_ids))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            entry = self._streams.get(output.request_id)
            if entry is not None:  # else its stream was closed: the abort is on its way
                stream, prompt_index = entry
                stream._put((prompt_index, output))

    def _fail(self, request_ids: list[str], error: BaseException) -> None:
        for request_id in request_ids:
            entry = self._streams.pop(request_id, None)
            if entry is not None:
                entry[0]._put(error)

    def shutdown(self) -> asyncio.Future:
        """Abort every request still in the engine, fail their streams, and join the thread. It
        starts on the first call; every call returns the same future to await."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._stop())
        return self._shutdown

    async def _stop(self) -> None:
        if self._thread is None:
            return
        self._commands.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._fail_all(EngineStoppedError("the server is shutting down"))

    def _fail_all(self, error: BaseException) -> None:
        self._fail(list(self._streams), error)

    # ---- the engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # a bug: say so to every waiting client rather than leave them hanging
            logger.exception("the engine thread stopped")
            self._to_loop(self._fail_all, RuntimeError(f"the engine stopped: {error}"))

    def _serve(self) -> None:
        engine = self.engine
        while True:
            commands = self._take_commands(block=not engine.has_unfinished_requests())
            if _STOP in commands:
                self._abort_all()
                self._publish()
                return
            for command in commands:
                self._apply(command)
            if engine.has_unfinished_requests():
                self._step()
            self._publish()

    def _take_commands(self, block: bool) -> list[tuple]:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: tuple) -> None:
        if command[0] == "add":
            _, request_id, prompt, params, arrival_time, lora_request, priority = command
            self._num_added_seqs += num_seqs(params)
            try:
                self.engine.add_request(request_id, prompt, params, arrival_time=arrival_time,
                                        lora_request=lora_request, priority=priority)
            except Exception as error:  # add_request leaves nothing behind: only this request fails
                if not isinstance(error, ValueError):
                    logger.exception("request %s could not be added", request_id)
                self._to_loop(self._fail, [request_id], error)
            else:
                self._observer.on_add(params)
        elif command[0] == "drop_lora":
            self.engine.loras.drop(command[1])
        else:
            _, request_ids = command
            live = [r for r in request_ids if self.engine.has_request(r)]
            self.engine.abort(live)
            if live:
                self._observer.on_abort(live)

    def _step(self) -> None:
        request_ids = self.engine.request_ids()
        try:
            outputs = self.engine.step()
        except Exception as error:
            # Which requests the failure touched is not known: end them all (the engine already
            # ended the failed batch's) rather than serve garbage, and go on with new ones.
            logger.exception("engine step failed; ending its %d requests", len(request_ids))
            self.engine.abort(request_ids)
            self._observer.on_abort(request_ids)
            self._to_loop(self._fail, request_ids, RuntimeError(f"engine step failed: {error}"))
            return
        self._observer.on_step(outputs, time.time(), self.engine.last_step_num_tokens)
        if outputs:
            self._to_loop(self._deliver, outputs)

    def _abort_all(self) -> None:
        request_ids = self.engine.request_ids()
        self.engine.abort(request_ids)
        if request_ids:
            self._observer.on_abort(request_ids)

    def _to_loop(self, function: Callable, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _publish(self) -> None:
        stats = self.engine.stats()
        running_loras, waiting_loras = self.engine.lora_requests() if self.engine.loras is not None else ((), ())
        self.snapshot = EngineSnapshot(
            num_running=self.engine.scheduler.num_running, num_waiting=self.engine.scheduler.num_waiting,
            kv_cache_usage=stats.kv_cache_usage, prefix_cache_queries=stats.prefix_cache_queries,
            prefix_cache_hits=stats.prefix_cache_hits, num_preemptions=stats.num_preemptions,
            num_running_seqs=self.engine.scheduler.num_running_seqs, num_seqs_added=self._num_added_seqs,
            running_loras=running_loras, waiting_loras=waiting_loras, num_drafts=stats.num_drafts,
            num_draft_tokens=stats.num_draft_tokens, num_accepted_tokens=stats.num_accepted_tokens,
            num_accepted_tokens_per_pos=tuple(stats.num_accepted_tokens_per_pos))
