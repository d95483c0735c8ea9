"""One connection to the broker before aiokafka starts: is a broker there, does it take our
TLS and SASL settings?

Why: aiokafka answers a wrong address or a refused password with "Unable to bootstrap" (the
real reason only in an error log line before it), a traceback, and warnings about unclosed
clients, and ``cardq run`` exited 1. A user error deserves one line that names the key to
fix and exit code 2 (:class:`~cardq.config.ConfigError`). The check costs one handshake and
one metadata request (a few milliseconds on a healthy broker) and gives up after
``timeout_s`` so a wrong address is reported quickly.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from .config import ConfigError, KafkaSettings


async def check_broker(
    kafka: KafkaSettings,
    options: dict[str, Any],
    *,
    address_key: str = "kafka.bootstrap_servers",
    timeout_s: float = 5.0,
) -> None:
    """Return once one bootstrap server answers a metadata request with our settings; else
    raise a :class:`ConfigError` naming the key most likely wrong.

    ``options`` are the aiokafka options the caller will use (``kafka_options``), so the check
    sees exactly what the clients will; ``address_key`` is how the user gave the address
    (the configuration key, or a command-line flag)."""
    bootstrap = str(options["bootstrap_servers"])
    try:
        hosts = collect_hosts(bootstrap)
    except (ValueError, TypeError) as exc:
        raise ConfigError(address_key, f"not host:port[,host:port...] ({exc})") from None
    if not hosts:
        raise ConfigError(address_key, "no address given")
    reasons: list[str] = []
    for host, port, _ in hosts:
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(
                    host,
                    port,
                    client_id=options.get("client_id", "cardq"),
                    request_timeout_ms=int(timeout_s * 1000),
                    ssl_context=options.get("ssl_context"),
                    security_protocol=options.get("security_protocol", "PLAINTEXT"),
                    sasl_mechanism=options.get("sasl_mechanism"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                )
                try:
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
            return
        except SaslAuthenticationFailed:
            raise ConfigError(
                "kafka.sasl_password",
                f"the broker at {host}:{port} refused user {kafka.sasl_username!r} with "
                f"{kafka.sasl_mechanism}: check kafka.sasl_username and kafka.sasl_password",
            ) from None
        except UnsupportedSaslMechanismError:
            raise ConfigError(
                "kafka.sasl_mechanism",
                f"the broker at {host}:{port} does not offer {kafka.sasl_mechanism}",
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                "kafka.ssl_cafile",
                f"the certificate of the broker at {host}:{port} is not trusted "
                f"({exc.verify_message}); give the CA that signed it",
            ) from None
        except TimeoutError:
            reasons.append(f"{host}:{port}: no answer in {timeout_s:g} s")
        except (OSError, KafkaError) as exc:
            reasons.append(f"{host}:{port}: {_reason(exc)}")
    hint = ""
    if kafka.security_protocol != "PLAINTEXT" or any("closed" in r for r in reasons):
        hint = f"; is kafka.security_protocol ({kafka.security_protocol}) the listener's?"
    raise ConfigError(
        address_key, f"no Kafka broker answers at {bootstrap} ({'; '.join(reasons)}){hint}"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
