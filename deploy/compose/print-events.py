#!/usr/bin/env python3
"""Prints the worker's result events as they come, for the local stack: one line each, with
every password field replaced by "***" (events carry the customer's initial password, which
logs must never hold). Reads EVENTS_QUEUE (declared and bound to every result event, as
publish-orders.py does), acknowledging each event once printed. With EXIT_AFTER=N it stops after
N events (for a local try); otherwise it runs until stopped. Settings (environment): AMQP_URL,
RESULTS_EXCHANGE, EVENTS_QUEUE, EXIT_AFTER, AMQP_WAIT_SECONDS. Needs pika.
"""

import json
import os
import sys
import time

import pika

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
RESULTS_EXCHANGE = os.environ.get("RESULTS_EXCHANGE", "connect.order-results")
EVENTS_QUEUE = os.environ.get("EVENTS_QUEUE", "compose.events")
EXIT_AFTER = int(os.environ.get("EXIT_AFTER", "0"))
AMQP_WAIT_SECONDS = float(os.environ.get("AMQP_WAIT_SECONDS", "120"))


def redact(value):
    """The value with every field whose name holds "password" replaced by "***"."""
    if isinstance(value, dict):
        return {
            key: "***" if "password" in key.lower() and isinstance(item, str) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def summary(event):
    account = event.get("account") or {}
    parts = [event.get("event", "?"), f"request {event.get('request_id')}"]
    if account.get("id"):
        parts.append(f"account {account['id']} <{account.get('email')}>")
    if event.get("failure"):
        parts.append(f"failure {json.dumps(event['failure'])}")
    return " | ".join(parts)


def main():
    deadline = time.monotonic() + AMQP_WAIT_SECONDS
    while True:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel = connection.channel()
            # The worker declares the results exchange at start-up: wait for it.
            channel.exchange_declare(RESULTS_EXCHANGE, passive=True)
            break
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelClosedByBroker) as error:
            if time.monotonic() >= deadline:
                sys.exit(f"print-events: no results exchange within {AMQP_WAIT_SECONDS:.0f}s: {error!r}")
            time.sleep(2)
    channel.queue_declare(EVENTS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(EVENTS_QUEUE, RESULTS_EXCHANGE, routing_key="#")
    print(f"print-events: waiting for events on {EVENTS_QUEUE}", flush=True)
    seen = 0
    for method, _properties, body in channel.consume(EVENTS_QUEUE):
        try:
            event = redact(json.loads(body))
            print(f"event: {summary(event)}", flush=True)
            print(json.dumps(event, indent=2, sort_keys=True), flush=True)
        except ValueError:
            print(f"event: not JSON ({len(body)} bytes)", flush=True)
        channel.basic_ack(method.delivery_tag)
        seen += 1
        if EXIT_AFTER and seen >= EXIT_AFTER:
            break
    channel.cancel()
    connection.close()


if __name__ == "__main__":
    main()
