"""The backend registry: adding a platform is one module and one line here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import BotSettings
from .base import Backend, BackendContext
from .feishu_ephemeral import FeishuEphemeral
from .feishu_message import FeishuMessage
from .feishu_webhook import FeishuWebhook
from .mindoffice_group import MindOfficeGroup

REGISTRY: Mapping[str, Any] = {
    FeishuWebhook.kind: FeishuWebhook,
    FeishuMessage.kind: FeishuMessage,
    FeishuEphemeral.kind: FeishuEphemeral,
    MindOfficeGroup.kind: MindOfficeGroup,
}


def build(settings: BotSettings, ctx: BackendContext) -> Backend:
    backend: Backend = REGISTRY[settings.backend](settings, ctx)
    return backend


__all__ = ["REGISTRY", "Backend", "BackendContext", "build"]
