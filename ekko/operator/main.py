"""``ekko operator``: run the kopf operator with Ekko's handlers."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import socket
import sys
import time

import kopf
from prometheus_client import start_http_server

from ekko.operator import (
    handlers,  # registers the handlers with kopf
    logformat,
)
from ekko.operator.metrics import REGISTRY

__all__ = ["handlers", "main"]


AUTO_PRIORITY_BASE = 2**52
"""``--priority auto`` counts down from here by the start time in microseconds: an operator started
earlier has the higher priority, and every value stays an exact JSON number (< 2**53)."""


def _priority(text: str) -> int:
    if text == "auto":
        return AUTO_PRIORITY_BASE - time.time_ns() // 1000
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'auto'") from None


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
    parser.add_argument(
        "--prometheus-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header sent with every analysis query, e.g. X-Scope-OrgID=team-a for Mimir or "
        "Cortex tenants (repeatable)",
    )
    parser.add_argument(
        "--prometheus-bearer-token-file",
        default=None,
        help="send 'Authorization: Bearer <token>' read from this file (re-read on every query)",
    )
    parser.add_argument(
        "--prometheus-ca-file", default=None, help="CA bundle that signs Prometheus's certificate"
    )
    parser.add_argument(
        "--allow-prometheus-address",
        action="append",
        default=[],
        metavar="URL",
        help="A Prometheus base URL (prefix) that a ModelVersion's analysis may name in "
        "prometheus.address (repeatable; env EKKO_PROMETHEUS_ALLOW). Others are refused: "
        "analysis only queries the operator's own Prometheus by default.",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        default=0,
        help="Serve the validating admission webhook on this port (0: off).",
    )
    parser.add_argument(
        "--webhook-host",
        default="127.0.0.1",
        help="Name or IP the API server reaches the webhook at (the Service's DNS name in a cluster).",
    )
    parser.add_argument(
        "--webhook-address", default="0.0.0.0", help="Address the webhook listens on."
    )
    parser.add_argument(
        "--webhook-cert-dir",
        default=None,
        help="Directory with tls.crt and tls.key; a self-signed pair is made there (or in a temp dir) if missing.",
    )
    parser.add_argument(
        "--webhook-unmanaged",
        action="store_true",
        help="Serve the webhook but leave its ValidatingWebhookConfiguration to the installer "
        "(the Helm chart registers one that calls the webhook Service).",
    )
    parser.add_argument(
        "--priority",
        type=_priority,
        default=0,
        help="Peering priority: of operators sharing the peering object 'ekko', only the highest "
        "acts. 'auto': the longest-running of the operators started with 'auto' acts and the "
        "others wait as hot standbys (the chart sets it; a second operator started by hand with "
        "a plain number below it pauses).",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone",
        action="store_true",
        help="Ignore peering (never pause for other operators).",
    )
    peering.add_argument(
        "--peering",
        action="store_true",
        help="Create the peering object 'ekko' if missing, so that a second operator pauses (the chart sets this).",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Debug logging.")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: one JSON object per line",
    )
    args = parser.parse_args(argv)
    logformat.configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # kopf logs every handler run at INFO; ours are wake-ups, so only problems are worth a line.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(logformat.RefusalsAreNotErrors())
    # The webhook's access log: every admission request, which includes every assignment write
    # of the operator itself (only it may write them), would be a line.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.prometheus_url:
        os.environ["EKKO_PROMETHEUS_URL"] = args.prometheus_url
    headers = {}
    for item in args.prometheus_header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--prometheus-header wants NAME=VALUE, got {item!r}")
        headers[name.strip()] = value
    if headers:
        os.environ["EKKO_PROMETHEUS_HEADERS"] = json.dumps(headers)
    if args.prometheus_bearer_token_file:
        os.environ["EKKO_PROMETHEUS_TOKEN_FILE"] = args.prometheus_bearer_token_file
    if args.prometheus_ca_file:
        os.environ["EKKO_PROMETHEUS_CA_FILE"] = args.prometheus_ca_file
    if args.allow_prometheus_address:
        os.environ["EKKO_PROMETHEUS_ALLOW"] = ",".join(args.allow_prometheus_address)
    memo = kopf.Memo()
    memo.peering_namespaces = args.namespace if args.peering else None
    memo.namespaces = args.namespace  # the operator's cache lists and watches these (none: all)
    # One identity for kopf's peering and for the workers' own pause check (ekko.operator.peering).
    memo.identity = os.environ.get("POD_ID") or (
        f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    )
    memo.priority = args.priority
    memo.clusterwide = not args.namespace
    memo.standalone = args.standalone
    if args.webhook_port:
        # Imported only when served: kopf expects an admission server once validators exist.
        from ekko.operator import webhook  # noqa: PLC0415

        memo.webhook = webhook.Options(
            args.webhook_port,
            args.webhook_host,
            args.webhook_address,
            args.webhook_cert_dir,
            managed=not args.webhook_unmanaged,
        )
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address, registry=REGISTRY)
    code = 0
    try:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
            # Peering: kopf pauses all but the highest-priority operator sharing the peering
            # object "ekko" (the chart creates it); without the object it runs alone.
            standalone=True if args.standalone else None,
            priority=args.priority,
            identity=memo.identity,
            memo=memo,
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except BaseException:
        # kopf stopped on an error (e.g. the API server stayed away longer than the backoffs):
        # say so and exit non-zero, so the pod restarts, instead of lingering on live threads.
        logging.getLogger("ekko.operator").exception("The operator stopped on an error.")
        code = 1
    # kopf has stopped and cleaned up. Blocking client calls still running in worker threads
    # would hold the interpreter open until the pod's grace period ends: leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
