"""The router registry: ``@ROUTERS.register("name")`` beside each implementation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.registry import Registry
from sim.routing.assignment import Assignment, RouterContext

Router = Callable[[np.ndarray, RouterContext], Assignment]

ROUTERS: Registry[Router] = Registry("router")
