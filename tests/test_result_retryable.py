"""``error.retryable`` in a result means what the README and schemas/README.md say it means:
true only when a transient error outlasted the attempts (a later resend may succeed)."""

from __future__ import annotations

from datetime import timedelta

from cardq.models import Status, utcnow
from cardq.testing import job
from tests.test_pipeline import answers, hook_request, make_pipeline


async def test_retries_run_out_on_a_transient_error_retryable() -> None:
    pipeline, _ = make_pipeline(answers((503, {"code": 5000, "msg": "busy"})), max_attempts=2)
    result = await pipeline.run(job(hook_request("r1")))
    assert result.status is Status.FAILED and result.error is not None
    assert result.error.code == "retries_exhausted"
    assert result.error.retryable is True
    assert result.encode().count(b'"retryable":true') == 1


async def test_refused_by_the_platform_not_retryable() -> None:
    pipeline, _ = make_pipeline(answers((200, {"code": 19021, "msg": "sign match fail"})))
    result = await pipeline.run(job(hook_request("r1")))
    assert result.status is Status.FAILED and result.error is not None
    assert result.error.retryable is False


async def test_out_of_time_not_retryable() -> None:
    pipeline, _ = make_pipeline(answers((200, {"code": 0})))
    past = (utcnow() - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    result = await pipeline.run(job({**hook_request("r1"), "expires_at": past}))
    assert result.status is Status.EXPIRED and result.error is not None
    assert result.error.retryable is False
