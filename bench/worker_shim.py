"""``cardq`` with one aiokafka default changed, for one diagnostic row of scenario 5.

Tansu (the test broker) answers a fetch only when ``fetch.max.wait.ms`` runs out, even
when records arrived meanwhile; Kafka answers as soon as ``fetch.min.bytes`` (1) is there.
So on Tansu a consumer's latency is dominated by the broker's long-poll: a bare aiokafka
consumer sees p50 ≈ 125 ms at the default 500 ms. cardq has no setting for it (on Kafka
it would change nothing), so this shim sets the consumer's default ``fetch_max_wait_ms``
and then runs ``cardq`` exactly as the console script does:
``python -m bench.worker_shim --fetch-max-wait-ms 10 run --config FILE``.
"""

from __future__ import annotations

import functools
import sys

import aiokafka


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--fetch-max-wait-ms":
        print(
            "usage: python -m bench.worker_shim --fetch-max-wait-ms MS cardq-args…", file=sys.stderr
        )
        return 2
    wait_ms = int(argv[1])
    original = aiokafka.AIOKafkaConsumer.__init__

    @functools.wraps(original)
    def init(self: aiokafka.AIOKafkaConsumer, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("fetch_max_wait_ms", wait_ms)
        original(self, *args, **kwargs)

    aiokafka.AIOKafkaConsumer.__init__ = init
    from cardq.cli import main as cardq

    return cardq(argv[2:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
