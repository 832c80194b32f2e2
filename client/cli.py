"""`densepred`: call a densepred service from the command line.

densepred predict photo.jpg --task instances --out overlay.png --json answer.json
densepred probe /readyz        # exit status 0 when the service answers 200 (container health checks)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from client.api import DEFAULT_URL, TASKS, DensepredClient, DensepredError, Task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densepred", description="Client for a densepred inference service.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="run a model on an image; write an overlay PNG and/or the JSON")
    predict.add_argument("image", type=Path, help="JPEG, PNG or WEBP file")
    predict.add_argument("--url", default=DEFAULT_URL, help=f"service address (default {DEFAULT_URL})")
    predict.add_argument("--task", choices=TASKS, required=True)
    predict.add_argument("--out", type=Path, help="overlay PNG to write (same size as the image)")
    predict.add_argument("--json", type=Path, dest="json_out", help="response JSON to write ('-' for stdout)")
    predict.add_argument("--score-threshold", type=float, help="drop detections below this (detect, instances)")
    predict.add_argument("--max-detections", type=int, help="keep the best N (detect, instances)")
    predict.add_argument("--classes", help="comma-separated class names to keep")
    predict.add_argument("--mask-threshold", type=float, help="mask probability cut-off (instances)")
    predict.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    predict.add_argument(
        "--api-key",
        default=os.environ.get("DENSEPRED_API_KEY") or None,
        help="the server's API key, if it has one (default: $DENSEPRED_API_KEY)",
    )

    probe = commands.add_parser("probe", help="exit 0 if an endpoint answers 200 (for health checks)")
    probe.add_argument("path", nargs="?", default="/readyz", help="endpoint (default /readyz)")
    probe.add_argument(
        "--url",
        default=local_service_url(os.environ),
        help=f"service address (default: the service's own DENSEPRED_HOST and DENSEPRED_PORT, else {DEFAULT_URL})",
    )
    probe.add_argument("--timeout", type=float, default=3.0)
    return parser


def local_service_url(environ: Mapping[str, str]) -> str:
    """The address a service started with this environment listens on, as seen from its own machine.

    A container's HEALTHCHECK runs `densepred probe` with the service's environment, so a service told
    to listen on another port (or interface) is still found. A wildcard bind is reached on loopback.
    """
    default = urlsplit(DEFAULT_URL)
    host = environ.get("DENSEPRED_HOST", "").strip() or str(default.hostname)
    port = environ.get("DENSEPRED_PORT", "").strip() or str(default.port)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
        return _probe(args)
    except DensepredError as exc:
        sys.stderr.write(f"densepred: the service answered {exc}\n")
    except httpx.HTTPError as exc:
        sys.stderr.write(f"densepred: cannot talk to {args.url}: {exc}\n")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"densepred: {exc}\n")
    return 1


def _predict(args: argparse.Namespace) -> int:
    data = args.image.read_bytes()
    task: Task = args.task
    params: dict[str, Any] = {
        "score_threshold": args.score_threshold,
        "max_detections": args.max_detections,
        "classes": args.classes,
        "mask_threshold": args.mask_threshold,
    }
    with DensepredClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        response = client.predict(data, task, **params)
    if args.out is not None:
        # Imported here so `densepred probe` starts fast: it needs neither numpy, Pillow nor pycocotools.
        from client.overlay import encode_png, open_image, render_overlay

        args.out.write_bytes(encode_png(render_overlay(open_image(data), response)))
    text = json.dumps(response, indent=2) + "\n"
    if args.json_out is not None and str(args.json_out) != "-":
        args.json_out.write_text(text)
    elif args.json_out is not None or args.out is None:
        sys.stdout.write(text)
    if args.out is not None:
        sys.stderr.write(f"{args.out}: {_summary(response)}\n")
    return 0


def _summary(response: dict[str, Any]) -> str:
    found = response.get("segments", response.get("detections", []))
    names = ", ".join(
        f"{item['label']} {item['score']:.2f}" if "score" in item else item["label"] for item in found[:5]
    )
    more = f", +{len(found) - 5} more" if len(found) > 5 else ""
    return f"{len(found)} found" + (f" ({names}{more})" if found else "")


def _probe(args: argparse.Namespace) -> int:
    with DensepredClient(args.url, timeout=args.timeout) as client:
        status = client.status(args.path)
    if status != 200:
        sys.stderr.write(f"densepred: {args.path} answered {status}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
