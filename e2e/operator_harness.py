"""Run the operator under test as a real process against the test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from e2e.procs import dying_with_parent

REPO = Path(__file__).resolve().parents[1]


class OperatorProcess:
    """``python -m ekko.operator -n NAMESPACE`` with its log in a temp file; restartable."""

    def __init__(self, kubeconfig: str | None, namespace: str, args: tuple[str, ...] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="ekko-operator-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = dict(os.environ)
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                dying_with_parent(
                    [
                        sys.executable,
                        "-m",
                        "ekko.operator",
                        "-n",
                        self.namespace,
                        "--metrics-port",
                        "0",
                        "--liveness",
                        "",
                        *self.args,
                    ]
                ),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check(self) -> None:
        """Raise with the log's tail when the operator has exited on its own."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"the operator exited ({self.proc.returncode}):\n{self.logs()[-3000:]}"
            )

    def stop(self, hard: bool = False, grace: float = 15) -> float:
        """SIGTERM (or SIGKILL when ``hard``) and wait; SIGKILL after ``grace`` seconds, as a
        kubelet does. The seconds it took to exit (``grace`` or more: it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        return time.monotonic() - started

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-6000:]
            for p in sorted(self.log_dir.glob("operator-*.log"))
        )

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if err is not None:
            sys.stderr.write(f"--- operator log ---\n{self.logs()}\n")
