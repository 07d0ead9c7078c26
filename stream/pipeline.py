"""decode → detect → track → inpaint → encode, each stage in its own thread, bounded queues between.

Stop path: the source ends, or ``max_frames`` is reached, and an end marker flows down the
queues. Error path: an exception in any stage sets the stop event, every thread leaves its
loop, the sinks are closed so the output stays valid, and the exception is re-raised to the
caller. Ctrl-C in the caller's thread takes the same path. Files never drop a frame. Live
sources run latency first (``PipelineConfig.live``): every queue holds one frame, the newest
wins (the decoder drops the oldest when the pipeline falls behind), and the detector runs beside
the frames rather than in their way (``stream.stages.DetectStage(background=True)``).

The runner knows stages only by the ``Stage`` interface; the concrete ones (detect, track,
inpaint) are in ``stream.stages``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from stream.records import Frame
from stream.report import RunStats
from stream.sink import Sink
from stream.source import Source

logger = logging.getLogger(__name__)

_END = object()
_POLL = 0.1


class PipelineStopped(Exception):
    """Raised inside a stage thread when the pipeline is being torn down."""


class Stage(abc.ABC):
    """One step of the pipeline; ``process`` fills in its part of the frame record."""

    name: str

    @abc.abstractmethod
    def process(self, frame: Frame) -> None: ...

    def close(self) -> None:
        """Release what the stage holds (worker threads); called once the pipeline has ended."""


def _put_waiting(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise PipelineStopped
        try:
            q.put(item, timeout=_POLL)
            return
        except queue.Full:
            continue


class _DropOldestQueue:
    """A bounded queue that, when full, discards its oldest item to make room (live sources)."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None]) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._on_drop = on_drop

    def put(self, item: object, stop: threading.Event) -> None:
        if item is _END:
            # The end marker waits for room: making room for it would drop the stream's last
            # frame, the one a viewer sees frozen once the camera stops.
            _put_waiting(self._queue, item, stop)
            return
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                # Only the source thread puts here and the end marker is its last item, so
                # what is dropped is always a frame.
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    continue
                self._on_drop()

    def get(self, timeout: float) -> object:
        return self._queue.get(timeout=timeout)


class _BlockingQueue:
    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize)

    def put(self, item: object, stop: threading.Event) -> None:
        _put_waiting(self._queue, item, stop)

    def get(self, timeout: float) -> object:
        return self._queue.get(timeout=timeout)


@dataclass(frozen=True)
class PipelineConfig:
    """queue_size: frames each queue holds; bounds latency and memory.
    sequential: run every stage in the caller's thread, one frame at a time (the baseline).
    max_frames: stop after this many frames (None: until the source ends).
    live: latency first: every queue holds one frame whatever ``queue_size`` says, so a frame
        waits behind at most one other at each stage.
    """

    queue_size: int = 4
    sequential: bool = False
    max_frames: int | None = None
    live: bool = False

    def __post_init__(self) -> None:
        # A queue of size 0 would be unbounded: memory and latency without limit.
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")


class Pipeline:
    def __init__(
        self,
        source: Source,
        stages: Sequence[Stage],
        sinks: Sequence[Sink],
        *,
        config: PipelineConfig = PipelineConfig(),
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        self.source = source
        self.stages = list(stages)
        self.sinks = list(sinks)
        self.config = config
        self.on_frame = on_frame
        self.stats = RunStats(stage_names=[s.name for s in self.stages])
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._exhausted = False

    # -- frame flow -------------------------------------------------------------------------
    def _frames(self) -> Iterator[Frame]:
        # Closed explicitly, not left to the garbage collector: the source releases its
        # container only once its reader has let go of it.
        with contextlib.closing(iter(self.source)) as frames:
            for n, frame in enumerate(frames):
                if self._stop.is_set() or (self.config.max_frames is not None and n >= self.config.max_frames):
                    return
                self.stats.count_read()
                yield frame
        self._exhausted = True

    def _run_stage(self, stage: Stage, frame: Frame) -> None:
        start = time.perf_counter()
        stage.process(frame)
        frame.latency[stage.name] = time.perf_counter() - start

    def _emit(self, frame: Frame) -> None:
        start = time.perf_counter()
        for sink in self.sinks:
            sink.write(frame)
        frame.latency["encode"] = time.perf_counter() - start
        self.stats.count_written(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    # -- threads ----------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        self._stop.set()

    def _source_loop(self, out) -> None:
        try:
            with contextlib.closing(self._frames()) as frames:
                for frame in frames:
                    frame.decoded_at = time.perf_counter()
                    out.put(frame, self._stop)
            out.put(_END, self._stop)
        except PipelineStopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._fail(exc)

    def _stage_loop(self, stage: Stage, inq, out) -> None:
        # Denormal floats make CPU convolutions many times slower; the flag is per thread.
        torch.set_flush_denormal(True)
        try:
            while True:
                item = self._get(inq)
                if item is _END:
                    out.put(_END, self._stop)
                    return
                self._run_stage(stage, item)
                out.put(item, self._stop)
        except PipelineStopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._fail(exc)

    def _get(self, inq) -> object:
        while True:
            if self._stop.is_set():
                raise PipelineStopped
            try:
                return inq.get(timeout=_POLL)
            except queue.Empty:
                continue

    def _run_threaded(self) -> None:
        size = 1 if self.config.live else self.config.queue_size
        first = (
            _DropOldestQueue(size, self.stats.count_dropped) if self.source.live else _BlockingQueue(size)
        )
        queues = [first] + [_BlockingQueue(size) for _ in self.stages]
        threads = [threading.Thread(target=self._source_loop, args=(first,), name="decode", daemon=True)]
        for stage, inq, out in zip(self.stages, queues, queues[1:]):
            threads.append(threading.Thread(target=self._stage_loop, args=(stage, inq, out), name=stage.name, daemon=True))
        for t in threads:
            t.start()
        try:
            while True:
                item = self._get(queues[-1])
                if item is _END:
                    break
                self._emit(item)
        except PipelineStopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - a sink error or Ctrl-C; re-raised by run()
            self._fail(exc)
        finally:
            self._stop.set()
            # Safe while the decode thread is still reading: the source only releases its
            # container once that thread lets go of it.
            self.source.close()
            for t in threads:
                t.join(timeout=10)
                if t.is_alive():
                    logger.warning("thread %s did not stop within 10 s", t.name)

    def _run_sequential(self) -> None:
        try:
            with contextlib.closing(self._frames()) as frames:
                for frame in frames:
                    frame.decoded_at = time.perf_counter()
                    for stage in self.stages:
                        self._run_stage(stage, frame)
                    self._emit(frame)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() once the sinks are closed
            self._fail(exc)
        finally:
            self.source.close()

    def stop(self) -> None:
        """Ask the pipeline to finish early (from another thread, a signal handler or a sink)."""
        self._stop.set()

    def run(self) -> RunStats:
        """Process the source into the sinks; re-raises the first stage error after closing."""
        self.stats.start()
        complete = False
        try:
            if self.config.sequential:
                self._run_sequential()
            else:
                self._run_threaded()
            # Only a fully read source may have the rest of its audio appended.
            complete = self._exhausted and not self._errors
        finally:
            for stage in self.stages:
                stage.close()
            self.stats.finish(corrupt=self.source.corrupt_frames)
            self._close_sinks(complete)
        if self._errors:
            raise self._errors[0]
        return self.stats

    def _close_sinks(self, complete: bool) -> None:
        first_error: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close(complete=complete)
            except BaseException as exc:  # noqa: BLE001 - every sink gets its chance to close
                logger.error("closing %s failed: %s", type(sink).__name__, exc)
                first_error = first_error or exc
        if first_error is not None and not self._errors:
            raise first_error

