"""Build the control-plane binaries from Go modules into a per-version cache.

Why build at all: the machines reach only package registries (no release downloads, no Docker),
and the Go module proxy serves the sources of Kubernetes, etcd, kwok and helm. Every component
is built the same way, from a small generated "wrapper" module that requires the upstream module
at its pinned version:

* its ``go`` and ``godebug`` lines are copied from the upstream go.mod, because they only take
  effect in the main module;
* for Kubernetes, every staging module the upstream go.mod requires at ``v0.0.0`` (and replaces
  with ``./staging/...``, which a dependency cannot do) is replaced with its published
  ``v0.X.Y``; the list is read from the upstream go.mod, never hard-coded;
* ``tools.go`` (build tag ``tools``) imports the main packages so ``go mod tidy`` keeps them.

Everything lands in ``$EKKO_CACHE/tools/<component>-<version>/`` (bin/, gomod/, gocache/,
wrapper/), so a second clone on the same machine reuses it, and a step is skipped when its
binaries exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e import versions

GO_BUILD_PARALLELISM = "2"  # the CI machines have 2 cores; more only raises peak memory
DOWNLOAD_ATTEMPTS = 4
HEARTBEAT_SECONDS = 30.0

# Output of `go` that marks a registry or network hiccup worth retrying.
_TRANSIENT = re.compile(
    r"dial tcp|i/o timeout|TLS handshake|connection reset|connection refused|unexpected EOF"
    r"|no such host|temporary failure|502 Bad Gateway|503 Service|504 Gateway|429 Too Many"
    r"|stream error|http2:|EOF$",
    re.IGNORECASE | re.MULTILINE,
)


class BuildError(RuntimeError):
    """A build step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Component:
    """One upstream Go module and the binaries built from it."""

    name: str
    module: str
    version: str
    # binary name -> import path of its main package
    binaries: dict[str, str]
    ldflags: tuple[str, ...] = ()
    # Files copied out of the module after download: path in module -> path under the tool dir.
    extra_files: dict[str, str] = field(default_factory=dict)
    replace_staging: bool = False
    # Binaries only the real node needs (kubelet, kube-proxy): built on demand into the same bin/,
    # so the control plane alone never waits for them.
    node_binaries: dict[str, str] = field(default_factory=dict)
    # Like extra_files, for the real node (the pause image's source).
    node_files: dict[str, str] = field(default_factory=dict)
    # Built only when named (`build prometheus`, `make tools`): the control plane never waits
    # for it, and `up` does not need it.
    optional: bool = False
    # Go build tags (-tags).
    tags: tuple[str, ...] = ()


def cache_root() -> Path:
    return Path(os.environ.get("EKKO_CACHE") or Path.home() / ".cache" / "ekko").expanduser()


def tool_dir(component: Component) -> Path:
    return cache_root() / "tools" / f"{component.name}-{component.version}"


def bin_dir(component: Component) -> Path:
    return tool_dir(component) / "bin"


def _kubernetes_ldflags(version: str, build_date: str) -> tuple[str, ...]:
    major, minor, _ = version.lstrip("v").split(".")
    stamps = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,  # must equal the source's minor or compatibility checks complain
        "gitTreeState": "clean",  # the sources are the unmodified release from the Go proxy
        "buildDate": build_date,
    }
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in stamps.items()]
    return tuple(flags)


def components() -> list[Component]:
    """The components in build order: small ones first, so `up` can be developed early."""
    k8s = versions.KUBERNETES
    return [
        Component(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=versions.ETCD,
            binaries={"etcd": "go.etcd.io/etcd/server/v3"},  # main package is the module root
        ),
        Component(
            name="kwok",
            module="sigs.k8s.io/kwok",
            version=versions.KWOK,
            binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
            ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={versions.KWOK}",),
            # Since v0.8.0 standalone kwok needs its stages passed with --config.
            extra_files={
                "kustomize/stage/node/fast/node-initialize.yaml": "stages/node-initialize.yaml",
                "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml": (
                    "stages/node-heartbeat-with-lease.yaml"
                ),
                "kustomize/stage/pod/fast/pod-ready.yaml": "stages/pod-ready.yaml",
                "kustomize/stage/pod/fast/pod-complete.yaml": "stages/pod-complete.yaml",
                "kustomize/stage/pod/fast/pod-delete.yaml": "stages/pod-delete.yaml",
            },
        ),
        Component(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=k8s,
            binaries={
                "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
                "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
                "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            },
            ldflags=(),  # filled in at build time: buildDate comes from the proxy's .info
            replace_staging=True,
            node_binaries={
                "kubelet": "k8s.io/kubernetes/cmd/kubelet",
                "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
            },
            node_files={"build/pause/linux/pause.c": "src/pause.c"},
        ),
        Component(
            name="helm",
            module="helm.sh/helm/v3",
            version=versions.HELM,
            binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
            ldflags=(
                f"-X helm.sh/helm/v3/internal/version.version={versions.HELM}",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            ),
        ),
        # Prometheus 3 with Kubernetes service discovery (Debian's 2.42 is built without it): the
        # real-node tests' Prometheus finds the agents by their pods' scrape annotations. Only
        # the Kubernetes discovery is compiled in (upstream's `remove_all_sd` and
        # `enable_kubernetes_sd` tags): the cloud SDKs of the others (AWS, Azure, GCE, ...) would
        # be most of the compile time. The web UI's assets are not embedded (no
        # `builtinassets` tag); the HTTP API is complete.
        Component(
            name="prometheus",
            module="github.com/prometheus/prometheus",
            version=versions.PROMETHEUS,
            binaries={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
            ldflags=(
                "-X github.com/prometheus/common/version.Version="
                + _prometheus_version(versions.PROMETHEUS),
                "-X github.com/prometheus/common/version.Branch=ekko-build",
            ),
            optional=True,
            tags=("remove_all_sd", "enable_kubernetes_sd"),
        ),
    ]


def _prometheus_version(module_version: str) -> str:
    """Prometheus 3.x publishes its Go module as v0.3XX.Y for release v3.XX.Y."""
    _, minor, patch = module_version.lstrip("v").split(".")
    if not 300 <= int(minor) < 400:
        raise ValueError(f"unexpected Prometheus module version {module_version}")
    return f"3.{int(minor) - 300}.{patch}"


def component(name: str) -> Component:
    for c in components():
        if c.name == name:
            return c
    raise KeyError(name)


def is_built(c: Component) -> bool:
    root = tool_dir(c)
    return (
        (bin_dir(c) / ".complete").exists()
        and all((bin_dir(c) / b).exists() for b in c.binaries)
        and all((root / dest).exists() for dest in c.extra_files.values())
    )


def node_built(c: Component) -> bool:
    return (
        is_built(c)
        and all((bin_dir(c) / b).exists() for b in c.node_binaries)
        and all((tool_dir(c) / dest).exists() for dest in c.node_files.values())
    )


def tool_path() -> str:
    """The bin directories of the components, for PATH (optional ones are found by path)."""
    return os.pathsep.join(str(bin_dir(c)) for c in components() if not c.optional)


def find_binary(name: str) -> Path:
    for c in components():
        if name in c.binaries or name in c.node_binaries or name == c.name:
            path = bin_dir(c) / name
            if path.exists():
                return path
            raise BuildError(
                f"{name} {c.version} is not built ({path} missing);"
                " run: python -m e2e.cluster build"
            )
    raise KeyError(name)


def stage_files() -> list[Path]:
    kwok = component("kwok")
    return [tool_dir(kwok) / dest for dest in kwok.extra_files.values()]


# --- running go --------------------------------------------------------------------------


def _log(c: Component, message: str) -> None:
    print(f"[build {c.name} {c.version}] {message}", flush=True)


def _go_env(c: Component) -> dict[str, str]:
    root = tool_dir(c)
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(root / "gomod"),
        GOCACHE=str(root / "gocache"),
        GOPATH=str(root / "gopath"),
        GOTOOLCHAIN="local",  # never download another toolchain: the machine's Go must do
        CGO_ENABLED="0",
        # -modcacherw: module files stay writable so `rm -rf` of the cache works.
        GOFLAGS="-mod=mod -modcacherw -buildvcs=false",
    )
    env.pop("GOWORK", None)
    return env


def _run_go(c: Component, args: list[str], cwd: Path, what: str, log_file: Path) -> str:
    """Run one go command, retrying when its output looks like a registry hiccup."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        proc = subprocess.run(
            ["go", *args], cwd=cwd, env=_go_env(c), capture_output=True, text=True, check=False
        )
        with log_file.open("a") as f:
            f.write(f"$ go {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode == 0:
            return proc.stdout
        output = proc.stderr + proc.stdout
        if attempt < DOWNLOAD_ATTEMPTS and _TRANSIENT.search(output):
            delay = 5 * attempt * attempt
            _log(
                c,
                f"{what} failed (transient?), retry {attempt}/{DOWNLOAD_ATTEMPTS - 1} in {delay}s",
            )
            time.sleep(delay)
            continue
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise BuildError(
            f"{what} for {c.name} {c.version} failed (go {' '.join(args[:3])} ...):\n{tail}\n"
            f"Full log: {log_file}. If this is a network error, check that GOPROXY"
            f" ({os.environ.get('GOPROXY') or 'default'}) is reachable and re-run"
            " `python -m e2e.cluster build` (finished steps are kept); if the version no longer resolves, change it in"
            f" e2e/versions.py."
        )
    raise AssertionError("unreachable")


def _parse_upstream_gomod(text: str) -> tuple[str, list[str], list[str]]:
    """Return the go directive, the godebug lines and the staging modules required at v0.0.0."""
    go_line = ""
    godebug: list[str] = []
    staging: list[str] = []
    block = ""
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block:
            if line == ")":
                block = ""
            elif block == "godebug":
                godebug.append(line)
            elif block == "require":
                m = re.fullmatch(r"(k8s\.io/\S+)\s+v0\.0\.0", line)
                if m:
                    staging.append(m.group(1))
            continue
        if line.startswith("go "):
            go_line = line
        elif re.fullmatch(r"(godebug|require|replace|exclude|retract|tool)\s*\(", line):
            block = line.split()[0].rstrip("(")
        elif line.startswith("godebug "):
            godebug.append(line[len("godebug ") :])
    if not go_line:
        raise BuildError("upstream go.mod has no go directive")
    return go_line, godebug, staging


def _write_wrapper(c: Component, upstream_gomod: str) -> Path:
    go_line, godebug, staging = _parse_upstream_gomod(upstream_gomod)
    wrapper = tool_dir(c) / "wrapper"
    wrapper.mkdir(parents=True, exist_ok=True)
    lines = [
        "// Generated by e2e/cluster/build.py: builds upstream binaries at a pinned version.",
        f"module ekko.local/tools/{c.name}",
        "",
        go_line,
        "",
    ]
    if godebug:
        lines += ["godebug (", *[f"\t{d}" for d in godebug], ")", ""]
    lines += [f"require {c.module} {c.version}", ""]
    if c.replace_staging:
        if not staging:
            raise BuildError(f"found no k8s.io/* v0.0.0 requires in the go.mod of {c.module}")
        published = versions.staging_version(c.version)
        lines += ["replace (", *[f"\t{m} => {m} {published}" for m in staging], ")", ""]
        _log(c, f"replacing {len(staging)} staging modules with {published}")
    (wrapper / "go.mod").write_text("\n".join(lines))
    # The node binaries too: their extra modules (kube-proxy needs a few) stay in go.mod.
    packages = {*c.binaries.values(), *c.node_binaries.values()}
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in sorted(packages))
    (wrapper / "tools.go").write_text(
        "//go:build tools\n\n"
        "// Package tools keeps the upstream main packages in go.mod; it is never compiled.\n"
        f"package tools\n\nimport (\n{imports}\n)\n"
    )
    return wrapper


class _Heartbeat:
    """Print elapsed time and compile progress (from `go build -v` output) every so often."""

    def __init__(self, c: Component, log_file: Path, started: float) -> None:
        self.c, self.log_file, self.started = c, log_file, started
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                lines = self.log_file.read_text().splitlines()
            except OSError:
                lines = []
            last = lines[-1] if lines else "-"
            _log(
                self.c,
                f"{_fmt(time.monotonic() - self.started)} since start of {self.c.name},"
                f" {len(lines)} packages compiled, last {last}",
            )

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _fmt(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def build_component(c: Component, force: bool = False, node: bool = False) -> None:
    """Build the component's binaries (with ``node``, its node binaries too); a built component
    gets only what is missing compiled into its bin/."""
    done = node_built(c) if node else is_built(c)
    if done and not force:
        _log(c, f"already built in {bin_dir(c)}")
        return
    wanted = {**c.binaries, **(c.node_binaries if node else {})}
    files = {**c.extra_files, **(c.node_files if node else {})}
    if is_built(c) and not force:  # add the node binaries next to the built ones
        wanted = {b: pkg for b, pkg in wanted.items() if not (bin_dir(c) / b).exists()}
    if shutil.which("go") is None:
        raise BuildError(
            "`go` is not on PATH; install Go >= 1.26 (the build uses GOTOOLCHAIN=local)"
        )
    root = tool_dir(c)
    root.mkdir(parents=True, exist_ok=True)
    log_file = root / "build.log"
    log_file.write_text("")
    started = time.monotonic()

    _log(c, f"downloading {c.module}@{c.version} into {root / 'gomod'}")
    info = json.loads(
        _run_go(
            c,
            ["mod", "download", "-json", f"{c.module}@{c.version}"],
            root,
            "module download",
            log_file,
        )
    )
    wrapper = _write_wrapper(c, Path(info["GoMod"]).read_text())

    _log(c, "resolving and downloading dependencies (go mod tidy)")
    _run_go(c, ["mod", "tidy"], wrapper, "dependency download", log_file)
    _log(c, f"dependencies ready after {_fmt(time.monotonic() - started)}")

    for src, dest in files.items():
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        source = Path(info["Dir"]) / src
        if not source.exists():
            raise BuildError(f"{src} is missing from {c.module}@{c.version} ({source})")
        shutil.copyfile(source, target)

    ldflags = list(c.ldflags)
    if c.name == "kubernetes":
        build_date = json.loads(Path(info["Info"]).read_text()).get("Time", "1970-01-01T00:00:00Z")
        ldflags += _kubernetes_ldflags(c.version, build_date)
    ldflags.append("-s -w")  # no symbol tables: smaller binaries, faster links

    partial = root / "bin.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    progress = root / "compile-progress.log"
    progress.write_text("")
    for binary, package in wanted.items():
        _log(c, f"compiling {binary} ({package})")
        with _Heartbeat(c, progress, started), progress.open("a") as out:
            proc = subprocess.run(
                [
                    "go",
                    "build",
                    "-v",
                    "-p",
                    GO_BUILD_PARALLELISM,
                    "-trimpath",
                    *(["-tags", ",".join(c.tags)] if c.tags else []),
                    "-ldflags",
                    " ".join(ldflags),
                    "-o",
                    str(partial / binary),
                    package,
                ],
                cwd=wrapper,
                env=_go_env(c),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(progress.read_text().splitlines()[-30:])
            raise BuildError(
                f"compiling {binary} {c.version} failed:\n{tail}\nFull output: {progress}"
            )
    elapsed = time.monotonic() - started
    if is_built(c) and not force:
        for binary in wanted:
            (partial / binary).rename(bin_dir(c) / binary)
        partial.rmdir()
    else:
        shutil.rmtree(bin_dir(c), ignore_errors=True)
        partial.rename(bin_dir(c))
        (bin_dir(c) / ".complete").write_text(json.dumps({"seconds": round(elapsed)}))
    _log(c, f"built {', '.join(wanted)} in {_fmt(elapsed)} -> {bin_dir(c)}")


def prune() -> None:
    """Delete what only a rebuild needs (module and build caches) of built components."""
    for c in components():
        if not is_built(c):
            continue
        for sub in ("gomod", "gocache", "gopath", "bin.partial"):
            shutil.rmtree(tool_dir(c) / sub, ignore_errors=True)
        _log(c, f"pruned; kept {bin_dir(c)}")


def build_all(only: list[str] | None = None, force: bool = False, node: bool = False) -> None:
    started = time.monotonic()
    for c in components():
        if (only and c.name not in only) or (not only and c.optional):
            continue
        build_component(c, force=force, node=node)
    print(
        f"[build] all done in {_fmt(time.monotonic() - started)}; cache {cache_root() / 'tools'}",
        flush=True,
    )


if __name__ == "__main__":
    try:
        build_all(sys.argv[1:] or None)
    except BuildError as err:
        sys.exit(f"build failed: {err}")
