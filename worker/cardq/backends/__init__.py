"""The backend registry: adding a platform is one module and one line here.

Each backend class describes itself (:class:`~cardq.backends.base.Description`); the
contract's backend list, validation (``validation.py``) and the configuration's checks
(``config_checks.py``) read it from here, and tests hold the JSON schema's ``backend`` enum
and operations, and the Helm chart's values schema, to it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..settings import BotSettings
from .base import Backend, BackendType, Description
from .context import BackendContext
from .feishu_ephemeral import FeishuEphemeral
from .feishu_message import FeishuMessage
from .feishu_webhook import FeishuWebhook
from .mindoffice_group import MindOfficeGroup


def _by_kind(*types: BackendType) -> Mapping[str, BackendType]:
    return {backend.description.kind: backend for backend in types}


REGISTRY: Mapping[str, BackendType] = _by_kind(
    FeishuWebhook,
    FeishuMessage,
    FeishuEphemeral,
    MindOfficeGroup,
)


def build(settings: BotSettings, ctx: BackendContext) -> Backend:
    return REGISTRY[settings.backend](settings, ctx)


def describe(kind: str) -> Description:
    return REGISTRY[kind].description


__all__ = ["REGISTRY", "Backend", "BackendContext", "BackendType", "Description", "build"]
