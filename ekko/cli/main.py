"""``ekko``: one command for the operator, the agent and offline placement plans."""

from __future__ import annotations

import importlib
import sys

from ekko import __version__

USAGE = """usage: ekko COMMAND [ARGS]

commands:
  plan       compute a placement offline: ekko plan -f problem.yaml (or ServerPool/Model manifests)
  operator   run the operator (kopf) against the current kube context
  agent      run the data-plane agent beside an inference server
  crds       write the CustomResourceDefinitions: ekko crds DIR
  publish    serve model updates as an origin: ekko publish --replay FILE [--listen HOST:PORT]
  version    print the version (also: ekko --version)
"""


def _has_solver() -> bool:
    try:
        importlib.import_module("ortools")
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = args[0], args[1:]
    # Each command is imported only when run (lazy imports, hence the PLC0415 waivers): the agent
    # must not pay for OR-Tools, nor `ekko plan` for kopf. OR-Tools is an extra (ekko[solver]):
    # the agent, the publisher and kubectl ekko run without it.
    if command in ("plan", "operator") and not _has_solver():
        print(
            f"ekko {command}: the placement solver needs OR-Tools, which is not installed; "
            "install Ekko with its solver extra: pip install 'ekko[solver]' "
            "(from a checkout: pip install '.[solver]')",
            file=sys.stderr,
        )
        return 2
    if command == "plan":
        from ekko.cli.plan import main as plan_main  # noqa: PLC0415

        return plan_main(rest)
    if command == "operator":
        from ekko.operator.main import main as operator_main  # noqa: PLC0415

        return operator_main(rest)
    if command == "agent":
        from ekko.agent.main import main as agent_main  # noqa: PLC0415

        return agent_main(rest)
    if command == "publish":
        from ekko.updates.publisher import main as publish_main  # noqa: PLC0415

        return publish_main(rest)
    if command == "crds":
        from ekko.api.crdgen import main as crds_main  # noqa: PLC0415

        return crds_main(rest)
    if command in ("version", "--version"):
        print(f"ekko {__version__}")
        return 0
    print(f"ekko: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
