"""Flat records of a run: timeline spans, and a recorder protocol that is a no-op by default."""

from sim.metrics.records import CATEGORIES, ListRecorder, NullRecorder, Recorder, Span

__all__ = ["CATEGORIES", "ListRecorder", "NullRecorder", "Recorder", "Span"]
