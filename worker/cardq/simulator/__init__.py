"""A local stand-in for the four chat platforms cardq delivers to.

One aiohttp server speaks the Feishu/Lark custom bot webhook, the Feishu/Lark IM API
(send, reply, update), Feishu ephemeral cards, their tenant token endpoint, and the
MindOffice robot API, following ``backend-facts.md``: the documented request shapes,
limits (sliding windows, scalable with ``time_scale``), error codes and idempotency.
Integration tests, ``cardq dev`` and the benchmarks run against it; ``/_sim/`` controls
it from another process. See ``README.md`` here for what is documented and what is not.
"""

from ._model import Accepted, Faults, SimulatorConfig, Stats
from ._server import Simulator
from .cli import main, serve

__all__ = ["Accepted", "Faults", "Simulator", "SimulatorConfig", "Stats", "main", "serve"]
