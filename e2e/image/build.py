"""Build Ekko's image and the pause image without Docker or a registry, cached by their inputs.

The Ekko image is the one the ``Dockerfile`` describes (keep them in step): Debian bookworm with
python3, libstdc++6 and libgomp1 (numpy and OR-Tools need them; a fake node never notices when
they are missing), a venv in ``/opt/ekko`` with the project's wheels, user 10001. Steps:

1. base layer: ``mmdebstrap --variant=essential`` (docs, man pages and locales left out), packed
   with umoci; cached by the package list and suites (``$EKKO_CACHE/images/base-<key>``);
2. wheels: ``pip wheel`` the project on the host (cp311 wheels fit Debian's Python 3.11);
3. app layer: unpack the base, create the venv and ``pip install --no-index`` the wheels in a
   chroot, add the user, repack (one more layer), set user, entrypoint and environment;
   cached by the project's sources (``ekko-<key>.tar``, an OCI layout archive);
4. import into the real node's containerd as ``localhost/ekko:<key>`` (and ``:dev``).

The pause image is ``build/pause/linux/pause.c`` from the Kubernetes module, compiled static.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from e2e.cluster import build, hostpkgs

REPO = Path(__file__).resolve().parents[2]
RECIPE_VERSION = "1"  # bump when a step changes the output for the same inputs
SUITE = "bookworm"
SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Same list as the Dockerfile's runtime stage.
BASE_PACKAGES = ("python3", "python3-venv", "libstdc++6", "libgomp1", "ca-certificates")
UID = 10001
VENV = "/opt/ekko"
ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/home/ekko",
    "TMPDIR": "/tmp",
}
IMAGE_NAME = "localhost/ekko"
KEEP = 3  # Ekko images kept (archives in the cache, refs in containerd); each is ~180 MB/600 MB
PAUSE_VERSION = "3.10.2"
PAUSE_REF = f"registry.k8s.io/pause:{PAUSE_VERSION}"


class ImageError(RuntimeError):
    pass


def images_dir() -> Path:
    d = build.cache_root() / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _log(msg: str) -> None:
    print(f"[image] {msg}", flush=True)


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 1200) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", "")),
    )
    if proc.returncode != 0:
        tail = (proc.stderr + proc.stdout).strip()[-3000:]
        raise ImageError(f"{' '.join(str(a) for a in args[:4])} ... failed:\n{tail}")
    return proc.stdout


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def base_key() -> str:
    return _sha(
        RECIPE_VERSION.encode(),
        SUITE.encode(),
        *(s.encode() for s in SOURCES),
        *(p.encode() for p in BASE_PACKAGES),
    )


def source_files() -> list[Path]:
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    files += sorted(
        p
        for p in (REPO / "ekko").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return files


def app_key() -> str:
    """Changes with the project's sources, this recipe and the base."""
    parts = [base_key().encode(), Path(__file__).read_bytes()]
    for f in source_files():
        parts += [str(f.relative_to(REPO)).encode(), f.read_bytes()]
    return _sha(*parts)


def ekko_ref(key: str | None = None) -> str:
    return f"{IMAGE_NAME}:{key or app_key()}"


# --- OCI layouts with umoci ---------------------------------------------------------------


@contextmanager
def _mounted(rootfs: Path, wheels: Path) -> Iterator[None]:
    """/proc, /dev and the wheels inside the rootfs for the chroot; always unmounted."""
    points = [(Path("/proc"), rootfs / "proc"), (Path("/dev"), rootfs / "dev")]
    points.append((wheels, rootfs / "tmp" / "wheels"))
    done: list[Path] = []
    try:
        for src, dest in points:
            dest.mkdir(parents=True, exist_ok=True)
            _run("mount", "--bind", src, dest)
            done.append(dest)
        yield
    finally:
        for dest in reversed(done):
            if subprocess.run(["umount", str(dest)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(dest)], check=False)
        (rootfs / "tmp" / "wheels").rmdir()


def _export(layout: Path, tags: set[str], out: Path) -> None:
    """Tar the layout with only the given tags in its index (the blobs are hard links)."""
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        staged = Path(tmp) / "layout"
        staged.mkdir()
        shutil.copyfile(layout / "oci-layout", staged / "oci-layout")
        _run("cp", "-al", layout / "blobs", staged / "blobs")
        index = json.loads((layout / "index.json").read_text())
        index["manifests"] = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") in tags
        ]
        (staged / "index.json").write_text(json.dumps(index))
        partial = out.with_suffix(".partial")
        _run("tar", "-C", staged, "-cf", partial, ".")
        partial.rename(out)


# --- pause --------------------------------------------------------------------------------


def build_pause() -> Path:
    """The pause image as an OCI archive (cached by pause.c and this recipe)."""
    kubernetes = build.component("kubernetes")
    source = build.tool_dir(kubernetes) / "src" / "pause.c"
    if not source.exists():
        build.build_component(kubernetes, node=True)
    key = _sha(RECIPE_VERSION.encode(), PAUSE_VERSION.encode(), source.read_bytes())
    out = images_dir() / f"pause-{key}.tar"
    if out.exists():
        return out
    hostpkgs.ensure(hostpkgs.IMAGE_PACKAGES)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        work = Path(tmp)
        _run("gcc", "-Os", "-static", f"-DVERSION=v{PAUSE_VERSION}", "-o", work / "pause", source)
        layout, bundle = work / "layout", work / "bundle"
        image = f"{layout}:{PAUSE_VERSION}"
        _run("umoci", "init", "--layout", layout)
        _run("umoci", "new", "--image", image)
        _run("umoci", "unpack", "--image", image, bundle)
        shutil.copy2(work / "pause", bundle / "rootfs" / "pause")
        _run("umoci", "repack", "--image", image, bundle)
        _run(
            "umoci",
            "config",
            "--image",
            image,
            "--config.entrypoint",
            "/pause",
            "--config.user",
            "65535:65535",
        )
        _export(layout, {PAUSE_VERSION}, out)
    _log(f"pause image built in {time.monotonic() - started:.1f}s -> {out}")
    return out


# --- the Ekko image -----------------------------------------------------------------------


def _base_layout() -> Path:
    """An OCI layout whose tag ``base`` is the Debian rootfs as one layer (cached)."""
    layout = images_dir() / f"base-{base_key()}"
    if (layout / ".complete").exists():
        return layout
    hostpkgs.ensure(hostpkgs.IMAGE_PACKAGES)
    shutil.rmtree(layout, ignore_errors=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        work = Path(tmp)
        rootfs_tar = work / "rootfs.tar"
        excludes = [
            f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")
        ]
        _log(f"mmdebstrap {SUITE} with {', '.join(BASE_PACKAGES)}")
        _run(
            "mmdebstrap",
            "--variant=essential",
            f"--include={','.join(BASE_PACKAGES)}",
            *excludes,
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            SUITE,
            rootfs_tar,
            *SOURCES,
        )
        _log(f"rootfs ready after {time.monotonic() - started:.1f}s; packing the base layer")
        bundle = work / "bundle"
        image = f"{layout}:base"
        _run("umoci", "init", "--layout", layout)
        _run("umoci", "new", "--image", image)
        _run("umoci", "unpack", "--image", image, bundle)
        _run("tar", "--numeric-owner", "-xpf", rootfs_tar, "-C", bundle / "rootfs")
        _run("umoci", "repack", "--image", image, bundle)
    (layout / ".complete").write_text(json.dumps({"seconds": round(time.monotonic() - started)}))
    _log(f"base layer built in {time.monotonic() - started:.1f}s")
    return layout


def _wheels(work: Path) -> Path:
    wheels = work / "wheels"
    _log("pip wheel the project")
    _run(
        str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "python"),
        "-m",
        "pip",
        "wheel",
        "-q",
        "--wheel-dir",
        wheels,
        f"{REPO}[solver]",
        cwd=work,
    )
    return wheels


def build_ekko(force: bool = False) -> tuple[Path, str]:
    """The Ekko image as an OCI archive and its reference (cached by the sources)."""
    key = app_key()
    out = images_dir() / f"ekko-{key}.tar"
    if out.exists() and not force:
        return out, ekko_ref(key)
    started = time.monotonic()
    base = _base_layout()
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        work = Path(tmp)
        wheels = _wheels(work)
        layout = work / "layout"
        layout.mkdir()
        shutil.copyfile(base / "oci-layout", layout / "oci-layout")
        shutil.copyfile(base / "index.json", layout / "index.json")
        _run("cp", "-al", base / "blobs", layout / "blobs")
        bundle = work / "bundle"
        _run("umoci", "unpack", "--image", f"{layout}:base", bundle)
        rootfs = bundle / "rootfs"
        with _mounted(rootfs, wheels):
            _run("chroot", rootfs, "/usr/bin/python3", "-m", "venv", VENV)
            _run(
                "chroot",
                rootfs,
                f"{VENV}/bin/pip",
                "install",
                "-q",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-index",
                "--find-links",
                "/tmp/wheels",
                "ekko[solver]",
            )
        with (rootfs / "etc" / "passwd").open("a") as f:
            f.write(f"ekko:x:{UID}:{UID}::/home/ekko:/usr/sbin/nologin\n")
        with (rootfs / "etc" / "group").open("a") as f:
            f.write(f"ekko:x:{UID}:\n")
        home = rootfs / "home" / "ekko"
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, UID, UID)
        image = f"{layout}:{key}"
        _run("umoci", "repack", "--image", image, bundle)
        config = ["umoci", "config", "--image", image, "--config.user", f"{UID}:{UID}"]
        config += ["--config.entrypoint", f"{VENV}/bin/ekko", "--config.workingdir", "/home/ekko"]
        config += ["--config.cmd", "operator", "--config.cmd", "--all-namespaces"]
        for name, value in ENV.items():
            config += ["--config.env", f"{name}={value}"]
        for port in (9300, 8080, 9400):
            config += ["--config.exposedports", f"{port}/tcp"]
        _run(*config)
        _run("umoci", "tag", "--image", image, "dev")
        _export(layout, {key, "dev"}, out)
    _log(f"ekko image built in {time.monotonic() - started:.1f}s -> {out}")
    archives = sorted(images_dir().glob("ekko-*.tar"), key=lambda p: p.stat().st_mtime)
    for old in archives[:-KEEP]:
        old.unlink(missing_ok=True)
    return out, ekko_ref(key)


# --- containerd ---------------------------------------------------------------------------


def image_present(ref: str) -> bool:
    from e2e.cluster import realnode  # here: realnode imports this module

    return bool(realnode.ctr("images", "ls", "-q", f"name=={ref}", check=False).stdout.strip())


def import_image(archive: Path, ref: str) -> float:
    """Import an OCI archive into the real node's containerd unless ``ref`` is there already."""
    from e2e.cluster import realnode  # here: realnode imports this module

    if image_present(ref):
        return 0.0
    started = time.monotonic()
    realnode.ctr("images", "import", "--base-name", ref.rsplit(":", 1)[0], str(archive))
    if not image_present(ref):
        raise ImageError(f"imported {archive} but containerd has no image {ref}")
    if ref.startswith(IMAGE_NAME + ":"):  # drop older Ekko images; containerd frees their layers
        keep = {
            f"{IMAGE_NAME}:{p.stem.removeprefix('ekko-')}" for p in images_dir().glob("ekko-*.tar")
        }
        keep |= {ref, f"{IMAGE_NAME}:dev"}
        listing = realnode.ctr("images", "ls", check=False).stdout.splitlines()[1:]
        # ref -> manifest digest; the CRI plugin also names each image by its id (sha256:...)
        digests = {row[0]: row[2] for row in (line.split() for line in listing) if len(row) > 2}
        stale = [r for r in digests if r.startswith(IMAGE_NAME + ":") and r not in keep]
        named = {d for r, d in digests.items() if not r.startswith("sha256:") and r not in stale}
        stale += [r for r, d in digests.items() if r.startswith("sha256:") and d not in named]
        if stale:
            realnode.ctr("images", "rm", *stale, check=False)
    return time.monotonic() - started
