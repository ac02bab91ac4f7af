"""python -m e2e.cluster build|prune|up|down|node-down|status|env|demo — see docs/control-plane.md."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster import build, control, hostpkgs, realnode
from e2e.image import build as image


def _env_lines() -> list[str]:
    return [
        f"export KUBECONFIG={shlex.quote(str(control.kubeconfig_path()))}",
        f'export PATH={shlex.quote(build.tool_path())}:"$PATH"',
    ]


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(control.kubeconfig_path())
    env["PATH"] = build.tool_path() + os.pathsep + env.get("PATH", "")
    return env


def _kubectl(*args: str) -> None:
    cmd = [str(build.find_binary("kubectl")), *args]
    print(f"$ kubectl {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, env=_tool_env(), check=False)
    if proc.returncode != 0:
        raise control.ClusterError(f"kubectl {' '.join(args)} failed (exit {proc.returncode})")


def _yaml_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.yaml"))


def demo(fleet: Path, crd_dir: Path, example_dir: Path) -> None:
    """One command for `make demo`: cluster, CRDs, examples, and what the operator would see."""
    control.ensure_up(fleet)
    crds = _yaml_files(crd_dir)
    if not crds:
        raise control.ClusterError("crds/ has no *.yaml; generate the CRDs first")
    _kubectl("apply", "--server-side", *[a for f in crds for a in ("-f", f)])
    _kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[a for f in crds for a in ("-f", f)],
    )
    examples = _yaml_files(example_dir)
    if examples:
        _kubectl("apply", "--server-side", *[a for f in examples for a in ("-f", f)])
    _kubectl("get", "nodes", "-L", "topology.kubernetes.io/zone", "-L", "nvidia.com/gpu.product")
    _kubectl("get", "ekko", "-A")
    print("\n" + "\n".join(_env_lines()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the binaries into the cache (skips what exists)")
    b.add_argument(
        "components", nargs="*", help=f"subset of {[c.name for c in build.components()]}"
    )
    b.add_argument("--force", action="store_true", help="rebuild even if built")
    sub.add_parser("prune", help="delete the Go module/build caches of built components (~7 GB)")
    u = sub.add_parser("up", help="start a fresh cluster with the fleet's nodes")
    u.add_argument("--fleet", type=Path, default=control.FLEET_FILE)
    u.add_argument(
        "--real-node",
        action="store_true",
        help="also start a real node (containerd, kubelet, kube-proxy; needs root); a healthy"
        " cluster is kept and only the node is added",
    )
    d = sub.add_parser("down", help="stop the cluster (keeps logs and certs)")
    d.add_argument("--purge", action="store_true", help="also delete the state dir")
    sub.add_parser(
        "node-down", help="stop the real node only and restore the host (the cluster stays up)"
    )
    sub.add_parser("status", help="print what runs, as JSON; exit 1 unless healthy")
    sub.add_parser("env", help='print shell exports: eval "$(python -m e2e.cluster env)"')
    m = sub.add_parser("demo", help="up (if needed) + install crds/ + apply examples/ + list")
    m.add_argument("--fleet", type=Path, default=control.FLEET_FILE)
    m.add_argument("--crds", type=Path, default=control.REPO / "crds", help="CRD directory")
    m.add_argument("--examples", type=Path, default=control.REPO / "examples")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            build.build_all(args.components or None, force=args.force)
        elif args.command == "prune":
            build.prune()
        elif args.command == "up":
            started = time.monotonic()
            if not build.is_built(build.component("kubernetes")):
                build.build_all()
            if args.real_node:  # outside up's lock: others may start tests meanwhile
                hostpkgs.ensure({**hostpkgs.NODE_PACKAGES, **hostpkgs.IMAGE_PACKAGES})
                build.build_component(build.component("kubernetes"), node=True)
                image.build_pause()
            control.up(args.fleet, real_node=args.real_node)
            print(f"cluster ready in {time.monotonic() - started:.1f}s; to use it:")
            print("\n".join(_env_lines()))
        elif args.command == "down":
            control.down(purge=args.purge)
            print(
                "cluster stopped"
                + (
                    "; state dir removed"
                    if args.purge
                    else f"; logs in {control.state_dir() / 'logs'}"
                )
            )
        elif args.command == "node-down":
            with control.lock():
                problems = realnode.down()
            if problems:
                return 1
        elif args.command == "status":
            st = control.status()
            print(json.dumps(st, indent=2))
            return 0 if st["healthy"] else 1
        elif args.command == "env":
            print("\n".join(_env_lines()))
        elif args.command == "demo":
            if not build.is_built(build.component("kubernetes")):
                build.build_all()
            demo(args.fleet, args.crds, args.examples)
    except (
        build.BuildError,
        control.ClusterError,
        hostpkgs.PackageError,
        image.ImageError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
