"""Timeline spans: what each GPU was doing when. Recording is optional (``NullRecorder``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Span categories, in the order plots stack them.
CATEGORIES = ("attention", "gate", "dispatch", "expert", "combine", "tp", "allreduce")


@dataclass(frozen=True)
class Span:
    """One interval on one GPU: ``start_s``/``end_s`` in seconds of simulated time.

    ``category`` is one of CATEGORIES; ``phase`` is ``"fwd"`` or ``"bwd"`` (``"step"`` for the
    gradient AllReduce); ``layer`` is the transformer layer (-1 when not layer-bound).
    """

    gpu: int
    category: str
    phase: str
    layer: int
    start_s: float
    end_s: float


class Recorder(Protocol):
    def span(self, gpu: int, category: str, phase: str, layer: int,
             start_s: float, end_s: float) -> None: ...


class NullRecorder:
    """Records nothing; the default, so tracing costs nothing when off."""

    def span(self, gpu, category, phase, layer, start_s, end_s) -> None:
        return None


class ListRecorder:
    """Keeps every span in a list."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def span(self, gpu, category, phase, layer, start_s, end_s) -> None:
        if end_s > start_s:
            self.spans.append(Span(int(gpu), category, phase, int(layer), float(start_s),
                                   float(end_s)))
