"""A real node next to the kwok fleet: containerd + runc, a kubelet, kube-proxy and a CNI bridge.

Why: kwok nodes never run a container, so probes, listen addresses, in-cluster credentials, RBAC
of the pods' ServiceAccount and the image itself go untested. This node runs real pods from
images built on this machine (``e2e/image``), next to the fake fleet, on the same API server.

Settings that matter (each one cost hours; see docs/control-plane.md, "Real node"):

* containerd runs as our own background process with its own root, state and socket, and
  ``restrict_oom_score_adj = true``: this VM withholds CAP_SYS_RESOURCE from root, and runc's
  write of oom_score_adj otherwise fails every sandbox with "can't get final child's PID".
* the kubelet: ``failCgroupV1: false`` (the host has cgroup v1 only), cgroupfs driver, a client
  cert from the cluster CA (system:node:<name>), webhook authentication and authorisation,
  ``resolvConf: ""`` (no upstream DNS in pods), a NoSchedule taint so that only pods that ask
  for the real node land on it (other suites use images that exist only as names).
* the CNI bridge: ipMasq false on a subnet apart from kwok's: pod traffic never leaves the host.

The node is one per machine (a fixed IP, bridge and ports), so its runtime state lives in fixed
places: ``/run/ekko-node`` (sockets, containerd state, IPAM), ``/var/lib/ekko-node`` (kubelet
root, pod logs); containerd's image store is kept in the cache (``$EKKO_CACHE/node``), so
imported images survive ``down``. ``down`` drains the pods, stops everything and then undoes
what the kubelet, kube-proxy, containerd and CNI changed on the host, comparing with a snapshot
taken before ``up`` (:func:`host_state`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import build, control, hostpkgs, pki
from e2e.cluster.control import HOST_IP, ClusterError

NODE_NAME = "ekko-real-1"
NODE_LABEL = "ekko.dev/real-node"  # value "true"; tests select the node with it
ZONE_LABEL = "ekko.dev/real-zone"  # a topology key only the real node has (value: real)
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
POD_SUBNET = "10.245.0.0/24"  # kwok hands out 10.244.0.0/16
BRIDGE = "ekko-cni0"
CNI_NETWORK = "ekko-real"
KUBELET_PORT = 10250
RUN = Path("/run/ekko-node")
VAR = Path("/var/lib/ekko-node")
SOCKET = RUN / "containerd.sock"
NAMESPACE = "k8s.io"  # containerd namespace of the CRI plugin
PROCS = ("kube-proxy", "kubelet", "containerd")  # stop order
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Everything the kubelet, kube-proxy and the CNI bridge change, restored by down.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
# Directories someone else might have made; removed by down only if up found them missing.
HOST_DIRS = (
    "/run/containerd",
    "/run/netns",
    "/var/run/netns",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/opt/containerd",
    "/etc/cni",
    "/opt/cni",
    "/var/lib/kubelet",
    str(RUN),
    str(VAR),
)
CHAIN_PREFIXES = ("KUBE-", "CNI-")


def node_dir() -> Path:
    return control.state_dir() / "node"


def containerd_root() -> Path:
    return build.cache_root() / "node" / "containerd"


def _owner_file() -> Path:
    return RUN / "owner"


def owner() -> str | None:
    """The state dir of the cluster the node belongs to (one real node per machine)."""
    return _read(_owner_file())


def _alive_in(state: Path) -> bool:
    """Whether a node process of the cluster in ``state`` still runs: an owner whose processes
    all died (its session ended) is stale, and a new cluster may take the node over."""
    return any(control.running(name, state) for name in PROCS)


def _owned() -> bool:
    return owner() in (None, str(control.state_dir()))


def _before_file() -> Path:
    return node_dir() / "host-before.json"


def _say(quiet: bool, started: float, msg: str) -> None:
    if not quiet:
        print(f"[real-node {time.monotonic() - started:5.1f}s] {msg}", flush=True)


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=SBIN_PATH + os.pathsep + os.environ.get("PATH", ""))


def _run(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, check=False, env=_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"{shlex.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def ctr(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`ctr` against the node's containerd, in the CRI plugin's namespace."""
    return _run(
        "ctr", "--address", str(SOCKET), "-n", NAMESPACE, *args, check=check, timeout=timeout
    )


# --- host state: what up changes and down restores ----------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _node_paths() -> list[str]:
    """Where the node mounts things (other mounts on a busy host are not ours to compare)."""
    return [
        str(VAR),
        str(RUN),
        str(containerd_root()),
        "/run/containerd",
        "/run/netns",
        "/var/run/netns",
        "/var/lib/kubelet",
    ]


def _ours(mount: str) -> bool:
    return any(mount == p or mount.startswith(p + "/") for p in _node_paths())


def _mounts() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        out.append(point)
    return out


def _cgroups() -> list[str]:
    root = Path("/sys/fs/cgroup")
    found = []
    for hierarchy in sorted(root.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            found += [str(d) for d in hierarchy.iterdir() if d.is_dir()]
    return sorted(found)


def _iptables_tools() -> list[str]:
    tools = []
    for base in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"):
        for where in ("/usr/sbin", "/sbin"):
            if Path(where, f"{base}-save").exists():
                tools.append(base)
                break
    return tools


def _iptables_rules(tool: str) -> list[str]:
    """The rules of every table, without packet counters."""
    out = _run(f"{tool}-save").stdout
    lines = []
    for line in out.splitlines():
        if not line or line.startswith("#"):
            continue
        # ":CHAIN POLICY [pkts:bytes]" -> ":CHAIN POLICY"
        lines.append(line.split(" [", 1)[0] if line.startswith(":") else line)
    return lines


def host_state() -> dict[str, Any]:
    """What the real node may change on the host, for down to compare and restore."""
    links = _run("ip", "-o", "link", "show").stdout.splitlines()
    return {
        "mounts": sorted({m for m in _mounts() if _ours(m)}),
        "cgroups": _cgroups(),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links),
        "iptables": {tool: _iptables_rules(tool) for tool in _iptables_tools()},
        "sysctls": {k: _read(Path("/proc/sys") / k) for k in SYSCTLS},
        "dirs": sorted(d for d in HOST_DIRS if Path(d).exists()),
        "netns": sorted(p.name for p in Path("/run/netns").glob("*")),
        "processes": sorted(_node_processes()),
    }


def _node_processes() -> list[str]:
    """Processes of a real node (ours, by name), e.g. a leftover containerd shim."""
    names = {"containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy"}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if Path(argv0).name in names:
            found.append(Path(argv0).name)
    return found


def diff_host(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences; empty when down left the host as up found it."""
    problems = []
    for key in ("mounts", "cgroups", "links", "dirs", "netns", "processes"):
        was, now = set(before[key]), set(after[key])
        if key == "mounts":
            was, now = {m for m in was if _ours(m)}, {m for m in now if _ours(m)}
        added = sorted(now - was)
        removed = sorted(was - now)
        if added:
            problems.append(f"{key} left behind: {added}")
        if removed:
            problems.append(f"{key} missing now: {removed}")
    for tool, rules in before["iptables"].items():
        now = after["iptables"].get(tool, [])
        extra = [r for r in now if r not in rules]
        gone = [r for r in rules if r not in now]
        if extra:
            problems.append(f"{tool} rules left behind: {extra[:10]}")
        if gone:
            problems.append(f"{tool} rules missing now: {gone[:10]}")
    for key, value in before["sysctls"].items():
        if after["sysctls"].get(key) != value:
            problems.append(f"sysctl {key} is {after['sysctls'].get(key)}, was {value}")
    return problems


# --- configuration ------------------------------------------------------------------------


def _containerd_config(pause_ref: str) -> str:
    return f"""\
version = 2
root = "{containerd_root()}"
state = "{RUN / "containerd"}"
# Plugins that would write outside our directories or that this host cannot use.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{SOCKET}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  # This VM withholds CAP_SYS_RESOURCE even from root: without this every sandbox fails with
  # "runc create failed: ... can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{node_dir() / "cni"}"
"""


def _cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,  # pod traffic stays on this machine: never NAT it outwards
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(RUN / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config() -> dict[str, Any]:
    ca = control.state_dir() / "pki" / "ca.crt"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": HOST_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # this host mounts cgroup v1 only (the kubelet warns)
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{SOCKET}",
        "imageServiceEndpoint": f"unix://{SOCKET}",
        "resolvConf": "",  # no upstream DNS inside pods
        "podLogsDir": str(VAR / "pod-logs"),
        "registerWithTaints": [TAINT],
        "maxPods": 30,
        "serializeImagePulls": False,
        # Locally imported images have no registry to come back from: never collect them, and
        # do not evict on a disk that is merely busy.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "rotateCertificates": False,
        "staticPodPath": "",
    }


def _kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "bindAddress": HOST_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the host's conntrack table and timeouts alone (0 = do not set).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # NodePorts on 127.0.0.1 would need net.ipv4.conf.all.route_localnet=1.
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "nodePortAddresses": [f"{HOST_IP}/32"],
    }


def _write_configs(ep: control.Endpoints, pause_ref: str) -> dict[str, Path]:
    d = node_dir()
    (d / "cni").mkdir(parents=True, exist_ok=True)
    p = control.state_dir() / "pki"
    server = f"https://{HOST_IP}:{ep.apiserver}"
    kubelet_client = pki.node_client(NODE_NAME)
    for client in (kubelet_client, pki.KUBE_PROXY):
        pki.client_cert(p, client)
    paths = {
        "containerd": d / "containerd.toml",
        "cni": d / "cni" / "10-ekko.conflist",
        "kubelet": d / "kubelet.yaml",
        "kubelet-kubeconfig": d / "kubelet.kubeconfig",
        "kube-proxy": d / "kube-proxy.yaml",
        "kube-proxy-kubeconfig": d / "kube-proxy.kubeconfig",
    }
    paths["containerd"].write_text(_containerd_config(pause_ref))
    paths["cni"].write_text(json.dumps(_cni_config(), indent=2))
    paths["kubelet"].write_text(yaml.safe_dump(_kubelet_config(), sort_keys=False))
    pki.write_kubeconfig(paths["kubelet-kubeconfig"], server, p, kubelet_client.name)
    pki.write_kubeconfig(paths["kube-proxy-kubeconfig"], server, p, pki.KUBE_PROXY.name)
    paths["kube-proxy"].write_text(
        yaml.safe_dump(_kube_proxy_config(paths["kube-proxy-kubeconfig"]), sort_keys=False)
    )
    return paths


# --- up -----------------------------------------------------------------------------------


def running() -> bool:
    return all(control.running(name) for name in PROCS)


def node_ready(api: control.Api) -> bool:
    status, body = api.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    if status != 200:
        return False
    conditions = body.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def up(ep: control.Endpoints, quiet: bool = False) -> dict[str, float]:
    """Add the real node to the running cluster (no-op if it runs); return step timings."""
    started = time.monotonic()
    timings: dict[str, float] = {}

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 1)
        return now

    if ep.advertise != HOST_IP or not control.ensure_host_address():
        raise ClusterError(
            f"the API server advertises {ep.advertise}, not {HOST_IP}: a real node needs root"
            " (to put the host address on an interface); run `up --real-node` as root"
        )
    other = owner()
    if (
        other is not None
        and other != str(control.state_dir())
        and RUN.exists()
        and _alive_in(Path(other))
    ):
        raise ClusterError(
            f"the real node belongs to the cluster in {other}; stop it there first"
            f" (EKKO_CLUSTER_DIR={other} python -m e2e.cluster node-down)"
        )
    api = control.Api(ep.apiserver)
    if running() and node_ready(api):
        _say(quiet, started, f"node {NODE_NAME} already running and Ready")
        return timings
    down(quiet=True)  # a half-started node from an earlier attempt

    t = time.monotonic()
    took = hostpkgs.ensure({**hostpkgs.NODE_PACKAGES, **hostpkgs.IMAGE_PACKAGES})
    if took:
        _say(quiet, started, f"installed Debian packages in {took:.1f}s")
    t = step("packages", t)
    kubernetes = build.component("kubernetes")
    build.build_component(kubernetes, node=True)
    t = step("kubelet-build", t)

    from e2e.image import build as image  # here: the image build imports this package

    pause_tar = image.build_pause()
    t = step("pause-image", t)

    node_dir().mkdir(parents=True, exist_ok=True)
    if not _before_file().exists():  # kept when an earlier down could not restore everything
        _before_file().write_text(json.dumps(host_state(), indent=1))
    for d in (RUN, VAR, containerd_root()):
        d.mkdir(parents=True, exist_ok=True)
    _owner_file().write_text(str(control.state_dir()))
    paths = _write_configs(ep, image.PAUSE_REF)

    try:
        containerd = control._start(
            "containerd",
            ["--config", str(paths["containerd"])],
            binary=Path("/usr/bin/containerd"),
            env=_env(),
        )
        control._wait(
            "containerd socket",
            lambda: ctr("version", check=False, timeout=5).returncode == 0,
            30,
            "containerd",
            containerd,
        )
        image.import_image(pause_tar, image.PAUSE_REF)
        t = step("containerd", t)
        _say(quiet, started, "containerd running, pause image imported")

        bin_dir = build.bin_dir(kubernetes)
        kubelet = control._start(
            "kubelet",
            [
                f"--config={paths['kubelet']}",
                f"--kubeconfig={paths['kubelet-kubeconfig']}",
                f"--root-dir={VAR / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={HOST_IP}",
                f"--node-labels={NODE_LABEL}=true,{ZONE_LABEL}=real",
                "--v=1",
            ],
            binary=bin_dir / "kubelet",
            env=_env(),
        )
        proxy = control._start(
            "kube-proxy",
            [f"--config={paths['kube-proxy']}", "--v=1"],
            binary=bin_dir / "kube-proxy",
            env=_env(),
        )
        control._wait(f"node {NODE_NAME} Ready", lambda: node_ready(api), 120, "kubelet", kubelet)
        if proxy.poll() is not None:
            raise ClusterError(f"kube-proxy exited\n{control._log_tail('kube-proxy')}")
        t = step("node-ready", t)
    except Exception:
        down(quiet=True)
        raise
    timings["total"] = round(time.monotonic() - started, 1)
    (node_dir() / "timings.json").write_text(json.dumps(timings))
    _say(quiet, started, f"node {NODE_NAME} Ready ({timings})")
    return timings


# --- down ---------------------------------------------------------------------------------


def _present() -> bool:
    """Whether this state dir has a real node (or its leftovers) to take down."""
    return (
        any(control.running(name) for name in PROCS)
        or _before_file().exists()
        or (_owned() and (RUN.exists() or VAR.exists()))
    )


def _drain(api: control.Api, timeout: float = 60) -> None:
    """Cordon the node and delete its pods, so the kubelet stops them (CNI DEL included)."""
    node = f"/api/v1/nodes/{NODE_NAME}"
    api.request(
        "PATCH",
        node,
        {"spec": {"unschedulable": True}},
        content_type="application/strategic-merge-patch+json",
    )
    selector = urllib.parse.quote(f"spec.nodeName={NODE_NAME}")

    def pods() -> list[dict[str, Any]]:
        status, body = api.request("GET", f"/api/v1/pods?fieldSelector={selector}")
        return body["items"] if status == 200 else []

    for pod in pods():
        meta = pod["metadata"]
        api.request(
            "DELETE",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 2},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and control.running("kubelet") and pods():
        time.sleep(0.5)


def _remove_containers() -> None:
    if control.running("containerd") is None:
        return
    for task in ctr("tasks", "ls", "-q", check=False).stdout.split():
        ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
        ctr("tasks", "rm", "-f", task, check=False)
    for container in ctr("containers", "ls", "-q", check=False).stdout.split():
        ctr("containers", "rm", container, check=False)


def _kill_shims() -> None:
    for pid, argv in control.processes():
        if Path(argv[0]).name == "containerd-shim-runc-v2" and str(SOCKET) in argv:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _unmount_below(prefixes: list[str]) -> None:
    points = [m for m in _mounts() if any(m == p or m.startswith(p + "/") for p in prefixes)]
    for point in sorted(set(points), key=len, reverse=True):
        if _run("umount", point).returncode != 0:
            _run("umount", "-l", point)


def _clean_iptables() -> None:
    """Delete every KUBE-*/CNI-* chain and the rules that jump to them, in every table."""
    for tool in _iptables_tools():
        table = ""
        deletes: list[list[str]] = []
        chains: list[tuple[str, str]] = []
        for line in _run(f"{tool}-save").stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                if chain.startswith(CHAIN_PREFIXES):
                    chains.append((table, chain))
            elif line.startswith("-A "):
                args = shlex.split(line)
                chain = args[1]
                jumps = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-j", "-g")]
                if not chain.startswith(CHAIN_PREFIXES) and any(
                    j.startswith(CHAIN_PREFIXES) for j in jumps
                ):
                    deletes.append(["-t", table, "-D", *args[1:]])
        for rule in deletes:
            _run(tool, "-w", *rule)
        for table, chain in chains:
            _run(tool, "-w", "-t", table, "-F", chain)
        for table, chain in chains:
            _run(tool, "-w", "-t", table, "-X", chain)


def _drop_new_tables(before: dict[str, list[str]]) -> None:
    """iptables-nft creates a table on first use and never deletes it: drop the tables that
    were not there before and hold no rules now."""
    for tool, family in (("iptables", "ip"), ("ip6tables", "ip6")):
        had = {line[1:] for line in before.get(tool, []) if line.startswith("*")}
        table = ""
        rules: dict[str, int] = {}
        for line in _iptables_rules(tool):
            if line.startswith("*"):
                table = line[1:]
                rules[table] = 0
            elif line.startswith("-A "):
                rules[table] += 1
        for name, count in rules.items():
            if name not in had and count == 0:
                _run("nft", "delete", "table", family, name)


def _remove_cgroups(before: list[str]) -> None:
    for top in sorted(set(_cgroups()) - set(before)):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def down(quiet: bool = False) -> list[str]:
    """Drain and stop the real node and restore the host; return what could not be restored."""
    if not _present():
        return []
    started = time.monotonic()
    ep = control.load_endpoints()
    api = control.Api(ep.apiserver) if ep else None
    if api is not None and control.running("kubelet"):
        try:
            _drain(api)
        except (OSError, ValueError) as err:
            _say(quiet, started, f"could not drain through the API server: {err}")
    if control.running("kube-proxy"):
        control._stop("kube-proxy")
    config = node_dir() / "kube-proxy.yaml"
    if config.exists():
        kubernetes = build.component("kubernetes")
        proxy = build.bin_dir(kubernetes) / "kube-proxy"
        if proxy.exists():
            _run(str(proxy), f"--config={config}", "--cleanup")
    control._stop("kubelet")
    _remove_containers()
    control._stop("containerd", timeout=20)
    _kill_shims()
    if api is not None:
        with contextlib.suppress(OSError):
            api.request("DELETE", f"/api/v1/nodes/{NODE_NAME}")
    before: dict[str, Any] | None = None
    if _before_file().exists():
        before = json.loads(_before_file().read_text())
    _unmount_below(_node_paths())
    if before is not None:
        for name in set(host_state()["netns"]) - set(before["netns"]):
            _run("ip", "netns", "delete", name)
    _run("ip", "link", "del", BRIDGE)
    _clean_iptables()
    if before is not None:
        _drop_new_tables(before["iptables"])
        _remove_cgroups(before["cgroups"])
        for key, value in before["sysctls"].items():
            path = Path("/proc/sys") / key
            if value is not None and _read(path) != value:
                try:
                    path.write_text(value)
                except OSError as err:
                    _say(quiet, started, f"could not restore {key}={value}: {err}")
        for d in HOST_DIRS:
            if d not in before["dirs"]:
                _run("rm", "-rf", "--one-file-system", d)
    else:
        for d in (RUN, VAR):
            _run("rm", "-rf", "--one-file-system", str(d))
    problems = diff_host(before, host_state()) if before is not None else []
    if problems:
        _say(quiet, started, "host not fully restored:\n  " + "\n  ".join(problems))
    else:
        _before_file().unlink(missing_ok=True)
        _say(quiet, started, "stopped; host restored")
    (node_dir() / "last-down.json").parent.mkdir(parents=True, exist_ok=True)
    (node_dir() / "last-down.json").write_text(json.dumps({"problems": problems}))
    return problems


def status() -> dict[str, Any]:
    return {name: control.running(name) for name in PROCS}
