"""The matching engine: a C order book per symbol (native/src/engine*.c) and its Python face.

``MatchingEngine``/``OrderBook`` (engine.py) are what services and tools use; ``reference.py`` is the
pure-Python oracle for tests and benchmarks; ``mbo.py`` replays recorded CME order-by-order data.
"""

from hftgate.matching.engine import (
    EngineConfig,
    MatchingEngine,
    OrderBook,
    TopOfBook,
    order_by_client_priority,
)
from hftgate.matching.types import (
    COMMAND_DTYPE,
    EVENT_DTYPE,
    Action,
    EventType,
    OrderFlag,
    OrderType,
    Reason,
    Side,
    StpMode,
    TimeInForce,
    new_commands,
)

__all__ = [
    "COMMAND_DTYPE",
    "EVENT_DTYPE",
    "Action",
    "EngineConfig",
    "EventType",
    "MatchingEngine",
    "OrderBook",
    "OrderFlag",
    "OrderType",
    "Reason",
    "Side",
    "StpMode",
    "TimeInForce",
    "TopOfBook",
    "new_commands",
    "order_by_client_priority",
]
