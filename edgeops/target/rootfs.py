"""A Debian root filesystem for the device's architecture, with its Python, built once and cached.

`debootstrap --foreign` downloads and verifies (Release signature, package hashes) a minimal
Debian for the target architecture and unpacks its essential packages; the second stage, which
would run the target's maintainer scripts, is never run. The rest (python3 and its libraries)
is unpacked with `dpkg-deb | tar --keep-directory-symlink`, which keeps Debian's merged /usr
(/lib -> usr/lib); plain `dpkg -x` would replace those links with directories and break the
loader path. Nothing in the tree is ever executed on the host: qemu runs it (emulate.py).

Without root, debootstrap runs in a user namespace (`unshare -rm`). There it cannot create
device nodes nor give files to other owners, so it is told it runs in a container
(container=lxc) and tar keeps files with the caller (TAR_OPTIONS=--no-same-owner).

Cache: CACHE/rootfs/KEY with KEY = debian-SUITE-ARCH-pyPYTHON-HASH(packages, layout); built in
CACHE/rootfs/KEY.tmp and renamed when complete, under a file lock, so an interrupted build or two
concurrent runs never leave a half-built tree in use.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import TargetToolError
from .spec import DEBIAN_RELEASES, TargetSpec

LAYOUT = 1
PACKAGES = ("python3",)  # on top of minbase, which already has libc6, libgcc-s1 and libstdc++6
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MARKER = "edgeops-rootfs.json"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RootFs:
    path: Path
    key: str
    mirror: str
    cached: bool
    seconds: float  # host time to build it (0 when cached)


def default_cache_dir() -> Path:
    """EDGEOPS_TARGET_CACHE, else $XDG_CACHE_HOME/edgeops/target, else ~/.cache/edgeops/target."""
    if os.environ.get("EDGEOPS_TARGET_CACHE"):
        return Path(os.environ["EDGEOPS_TARGET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeops" / "target"


@contextlib.contextmanager
def cache_lock(cache_dir: Path, name: str):
    """An exclusive lock on one cache entry (released if the process dies)."""
    locks = cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def host_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian mirror this machine's apt uses (one-line and deb822 formats), else deb.debian.org."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for uri, suites in _entries(text, deb822=path.suffix == ".sources"):
            if any(s in DEBIAN_RELEASES for s in suites) and "security" not in uri and "/debian" in uri:
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _entries(text: str, deb822: bool):
    """(URI, suites) of each `deb` source."""
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split()
        return
    for line in text.splitlines():
        parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(parts) >= 3 and parts[0] == "deb":
            yield parts[1], [parts[2]]


def ensure_rootfs(spec: TargetSpec, cache_dir: Path, mirror: str | None = None, log=None) -> RootFs:
    """The cached root filesystem for ``spec``, built from the mirror if missing."""
    mirror = (mirror or host_mirror()).rstrip("/")
    digest = hashlib.sha256(json.dumps([LAYOUT, sorted(PACKAGES)]).encode()).hexdigest()[:12]
    key = f"debian-{spec.suite}-{spec.arch.debian}-py{spec.python}-{digest}"
    final = cache_dir / "rootfs" / key
    with cache_lock(cache_dir, "rootfs-" + key):
        if (final / MARKER).is_file():
            return RootFs(final, key, json.loads((final / MARKER).read_text())["mirror"], True, 0.0)
        tools = build_tools()
        start = time.monotonic()
        tmp = final.with_name(f"{key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if log:
            log(f"building a Debian {spec.suite} {spec.arch.debian} root filesystem from {mirror} "
                "(once; cached afterwards)")
        try:
            _debootstrap(tools, spec, tmp, mirror)
            _unpack_base(tools, tmp)
            python = tmp / "usr" / "bin" / f"python{spec.python}"
            if not python.is_file():
                raise TargetToolError(f"the root filesystem has no {python.name} after debootstrap",
                                      f"check that Debian {spec.suite} still ships it on {mirror}",
                                      skippable=False)
            # What no check reads: the .debs, apt's package lists, documentation and translations (~100 MB).
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "debootstrap", "usr/share/doc",
                         "usr/share/man", "usr/share/info", "usr/share/locale"):
                shutil.rmtree(tmp / junk, ignore_errors=True)
            (tmp / MARKER).write_text(json.dumps({"key": key, "suite": spec.suite, "arch": spec.arch.debian,
                                                  "python": spec.python, "packages": list(PACKAGES),
                                                  "mirror": mirror, "built_unix": round(time.time())}, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves only its log behind
        return RootFs(final, key, mirror, False, time.monotonic() - start)


def build_tools() -> dict[str, str]:
    """Paths of the tools a build needs; TargetToolError naming the Debian package otherwise."""
    found, missing = {}, []
    for tool, package in (("debootstrap", "debootstrap"), ("dpkg-deb", "dpkg"), ("tar", "tar")):
        path = shutil.which(tool, path=SBIN_PATH + os.pathsep + os.environ.get("PATH", ""))
        if path:
            found[tool] = path
        else:
            missing.append(package)
    if os.geteuid() != 0:
        if not shutil.which("unshare"):
            missing.append("util-linux")
        elif subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
            raise TargetToolError(
                "building the target's root filesystem without root needs user namespaces, which this "
                "kernel refuses (unshare -rm failed)",
                "run once as root (or with sudo) to fill the cache, or enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces)")
    if missing:
        raise TargetToolError(f"building the target's root filesystem needs {', '.join(missing)}",
                              f"install: sudo apt-get install {' '.join(sorted(set(missing)))} qemu-user-static")
    return found


def _debootstrap(tools: dict, spec: TargetSpec, tmp: Path, mirror: str) -> None:
    cmd = [tools["debootstrap"], f"--arch={spec.arch.debian}", "--foreign", "--variant=minbase",
           f"--include={','.join(PACKAGES)}", spec.suite, str(tmp), mirror]
    env = dict(os.environ, PATH=SBIN_PATH + os.pathsep + os.environ.get("PATH", ""))
    if os.geteuid() != 0:
        cmd = ["unshare", "-rm", *cmd]
        env.update(container="lxc", TAR_OPTIONS="--no-same-owner")
    log_path = tmp.with_name(tmp.name + ".log")
    with open(log_path, "w") as log_fh:
        try:
            code = subprocess.run(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, timeout=3600).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if code == 0:
        log_path.unlink()
        return
    text = log_path.read_text(errors="replace")
    errors = [ln for ln in text.splitlines() if ln.startswith(("E:", "W:"))] or text.splitlines()[-3:]
    hint = f"the full log is {log_path}"
    if "unknown key" in text or "NO_PUBKEY" in text or "keyring" in text.lower():
        hint = "install the Debian archive keyring: sudo apt-get install debian-archive-keyring; " + hint
    elif "Failed getting release file" in text or "Couldn't download" in text or "Failure trying" in text:
        hint = f"check the network and the mirror {mirror} (pass --target-mirror URL); " + hint
    raise TargetToolError(f"debootstrap could not build Debian {spec.suite} {spec.arch.debian}: "
                          + " ".join(errors)[:400], hint, skippable=False)


def _unpack_base(tools: dict, root: Path) -> None:
    """Unpack what --foreign only downloaded (python3 and its dependencies) into ``root``."""
    paths = dict(line.split(" ", 1) for line in (root / "debootstrap" / "debpaths").read_text().splitlines()
                 if " " in line)
    for package in (root / "debootstrap" / "base").read_text().split():
        deb = root / paths[package].lstrip("/")
        with subprocess.Popen([tools["dpkg-deb"], "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as src:
            tar = subprocess.run([tools["tar"], "-x", "--keep-directory-symlink", "--no-same-owner",
                                  "-C", str(root)], stdin=src.stdout, capture_output=True)
            src.stdout.close()
        if src.returncode != 0 or tar.returncode != 0:
            raise TargetToolError(f"cannot unpack {deb.name}: {tar.stderr.decode(errors='replace')[:300]}",
                                  "the download may be corrupt: delete the cache directory and retry",
                                  skippable=False)
