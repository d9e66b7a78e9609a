#!/usr/bin/env python3
"""Publishes the sample orders of examples/orders/ once, as Connect would, for the local stack.

Each file's JSON goes to the orders exchange with the new-account routing key, persistent, with
publisher confirms (a refused or unconfirmed publish exits 1). Before publishing it declares the
queue the event printer reads (print-events.py) and binds it to every result event, so no event
of these orders is missed, whichever service starts first. Waits up to AMQP_WAIT_SECONDS for the
broker. Settings (environment): AMQP_URL, ORDERS_EXCHANGE, ORDERS_ROUTING_KEY, RESULTS_EXCHANGE,
EVENTS_QUEUE, ORDERS_DIR. Needs pika.
"""

import json
import os
import pathlib
import sys
import time

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
ORDERS_EXCHANGE = os.environ.get("ORDERS_EXCHANGE", "connect.orders")
ORDERS_ROUTING_KEY = os.environ.get("ORDERS_ROUTING_KEY", "aws.account.new")
RESULTS_EXCHANGE = os.environ.get("RESULTS_EXCHANGE", "connect.order-results")
EVENTS_QUEUE = os.environ.get("EVENTS_QUEUE", "compose.events")
ORDERS_DIR = pathlib.Path(os.environ.get("ORDERS_DIR", "examples/orders"))
AMQP_WAIT_SECONDS = float(os.environ.get("AMQP_WAIT_SECONDS", "120"))


def connect():
    deadline = time.monotonic() + AMQP_WAIT_SECONDS
    while True:
        try:
            return pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        except pika.exceptions.AMQPConnectionError as error:
            if time.monotonic() >= deadline:
                sys.exit(f"publish-orders: no broker within {AMQP_WAIT_SECONDS:.0f}s: {error!r}")
            time.sleep(2)


def declare_events_queue(channel):
    """The printer's queue, bound to every result event (both scripts declare it alike)."""
    channel.queue_declare(EVENTS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(EVENTS_QUEUE, RESULTS_EXCHANGE, routing_key="#")


def main():
    files = sorted(ORDERS_DIR.glob("*.json"))
    if not files:
        sys.exit(f"publish-orders: no *.json in {ORDERS_DIR}")
    connection = connect()
    channel = connection.channel()
    # The worker declares the exchanges at start-up; passive: fail rather than create them.
    channel.exchange_declare(ORDERS_EXCHANGE, passive=True)
    channel.exchange_declare(RESULTS_EXCHANGE, passive=True)
    declare_events_queue(channel)
    channel.confirm_delivery()
    for path in files:
        body = path.read_bytes()
        order = json.loads(body)
        channel.basic_publish(
            ORDERS_EXCHANGE,
            ORDERS_ROUTING_KEY,
            body,
            pika.BasicProperties(
                content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
            ),
            mandatory=True,
        )
        print(f"publish-orders: published {path.name} (request {order.get('id')})", flush=True)
    connection.close()
    print(f"publish-orders: {len(files)} orders published", flush=True)


if __name__ == "__main__":
    main()
