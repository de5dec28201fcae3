"""Panel dashboard components (DESIGN.md §6): ``TraceStore`` (selection + data), one view per figure, and
``build_app``. Needs ``panel``; importing it registers nothing and starts nothing."""

from .app import APP_TITLE, build_app
from .store import TraceStore
from .views import VIEWS, AssocView, FactView, LayersView, StaleView, TimelineView, TraceView, WritesView

__all__ = ["APP_TITLE", "build_app", "TraceStore", "TraceView", "TimelineView", "AssocView", "WritesView",
           "FactView", "StaleView", "LayersView", "VIEWS"]
