"""What a backend gets from the worker when it is built for one bot.

Its own module because the transport and the token cache are the worker's, shared by every
backend: ``base.py`` (the protocols) and the backends read this, and nothing here imports
them back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tokens import TokenPool
from .transport import Transport


@dataclass(frozen=True)
class BackendContext:
    transport: Transport
    timeout_s: float
    tokens: TokenPool  # one cached tenant token per Feishu/Lark app
