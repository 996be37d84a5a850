#!/usr/bin/env python3
"""moto server, with DynamoDB requests handled one at a time.

Why: moto serves requests on werkzeug threads and its DynamoDB takes no lock,
so two concurrent `UpdateItem ... ADD last_seq :1` on one item can both read
the old value and return the same number. Real DynamoDB applies each item
write atomically, and the gateways' per-conversation `seq` counter relies on
that (the end-to-end suite caught two sends given one seq). Serialising the
DynamoDB requests (`X-Amz-Target: DynamoDB_*`) restores that guarantee;
SNS and SQS stay concurrent, as their 20-second long polls need.

Usage: moto_server.py [-H HOST] [-p PORT] (as `python -m moto.server`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def serialized_dynamodb(app):
    lock = threading.Lock()

    def wrapped(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                # The body is produced inside the lock: the write is done by then.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialized_dynamodb(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
