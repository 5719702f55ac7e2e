#!/usr/bin/env python3
"""moto's server (the AWS emulator of the test suite), with requests applied one at a time.

moto_server handles each request on its own thread without isolation between them: two
concurrent DynamoDB TransactWriteItems with the same condition can both pass it, and
concurrent PutRecords into one Kinesis shard can lose records. AWS gives neither anomaly
(transactions are serializable, PutRecords is atomic per record), and recstream's
correctness tests rely on exactly those guarantees. So this wraps moto's own WSGI
application in one lock: connections are still served concurrently, but each request runs
alone, as one atomic step, which is what AWS promises per call.

  moto_server.py [-H 127.0.0.1] [-p PORT]
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, default=5000)
    args = ap.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            # Materialise the body inside the lock: the response is part of the step.
            return [b"".join(app(environ, start_response))]

    run_simple(args.host, args.port, serialized, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
