"""`hps serve-metrics`: start an HPS from a ps.json and serve its Prometheus metrics until stopped.

For a sidecar beside your own server, or to watch a deployment's tiers and Kafka update sources: the
HPS loads every table and runs the ps.json's update sources as a server would, and
`http://ADDRESS:PORT/metrics` answers the families of `hps.metrics` (docs/metrics.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

EXAMPLE = """examples:
  hps serve-metrics hps-demo/ps.json --port 9100
  hps serve-metrics ps.json --port 9100 --address 0.0.0.0      # reachable from other hosts
  curl -s localhost:9100/metrics | grep '^hps_'"""


def register(sub: Any) -> None:
    """Add the `serve-metrics` subcommand to `sub` (argparse subparsers)."""
    p = sub.add_parser("serve-metrics", help="start an HPS from a ps.json and serve its Prometheus /metrics "
                                             "(stops on Ctrl-C / SIGTERM)",
                       description="Start an HPS from a ps.json (every table loaded, its Kafka update sources "
                                   "running) and serve its Prometheus metrics on http://ADDRESS:PORT/metrics "
                                   "until Ctrl-C or SIGTERM.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="ps.json")
    p.add_argument("--port", type=int, default=9100, help="port of /metrics (default 9100; 0: any free port)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.set_defaults(run=run, flags={"metrics_port": "--port"})


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT / SIGTERM; the URL goes to stderr once the endpoint answers."""
    import hps
    from hps.metrics import serve_metrics

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with hps.HPS(args.config, show_progress=sys.stderr.isatty()) as ps:
            server = serve_metrics(ps, args.port, args.address)
            try:
                print(f"hps serve-metrics: {args.config}: metrics on {server.url} (Ctrl-C or SIGTERM stops)",
                      file=sys.stderr, flush=True)
                while not stop.wait(1.0):
                    pass
            finally:
                server.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
