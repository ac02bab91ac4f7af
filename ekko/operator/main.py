"""``ekko operator``: run the kopf operator with Ekko's handlers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server

from ekko.operator import handlers  # registers the handlers with kopf
from ekko.operator.metrics import REGISTRY

__all__ = ["handlers", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ekko operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="Watch this namespace (repeatable)."
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="Watch every namespace (default)."
    )
    parser.add_argument("--metrics-port", type=int, default=9300, help="Port of /metrics (0: off).")
    parser.add_argument("--metrics-address", default="0.0.0.0", help="Address /metrics listens on.")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="Liveness endpoint URL ('' to disable).",
    )
    parser.add_argument(
        "--prometheus-url",
        default=None,
        help="Prometheus for analysis metrics that name no address (env EKKO_PROMETHEUS_URL).",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Debug logging.")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # kopf logs every handler run at INFO; ours are wake-ups, so only problems are worth a line.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.prometheus_url:
        os.environ["EKKO_PROMETHEUS_URL"] = args.prometheus_url
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address, registry=REGISTRY)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
            standalone=True,
        )
    # kopf has stopped and cleaned up. Blocking client calls still running in worker threads
    # would hold the interpreter open until the pod's grace period ends: leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
