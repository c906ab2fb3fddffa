"""kombu's Redis transport with one redis-py client per channel (worker.broker_transport),
against the test's Redis broker."""

from __future__ import annotations

import pytest
from kombu import Queue

from worker import broker_transport, celery_app

pytestmark = pytest.mark.usefixtures("env")


def test_broker__redis__one_client_for_every_operation_of_a_channel() -> None:
    with celery_app.app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(conn.transport, broker_transport.Transport)

        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second, "no redis-py client built per operation"
        queue = Queue("test-one-client", channel=channel)
        queue.declare()
        with conn.Producer() as producer:
            producer.publish({"n": 1}, routing_key="test-one-client")
        message = queue.get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        message.ack()
        assert queue.get() is None
        queue.delete()


def test_broker__pool_rebuilt__a_new_client_on_the_new_pool() -> None:
    with celery_app.app.connection_for_write() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as before:
            pass
        channel._disconnect_pools()  # as kombu does after a connection error

        with channel.conn_or_acquire() as after:
            assert after is not before and after.connection_pool is channel.pool
            assert after.ping()


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", "worker.broker_transport:Transport"),
        (
            "sentinel://127.0.0.1:26379;sentinel://h2:26379",
            "worker.broker_transport:SentinelTransport",
        ),
        ("rediss://127.0.0.1:6380/0", None),
        ("amqp://guest@127.0.0.1:5672//", None),
    ],
)
def test_broker_transport__for_url(url: str, transport: str | None) -> None:
    assert broker_transport.for_url(url) == transport
