"""deploy/: the manifests, the image and the node script are valid and agree with the CLI.

Nothing here runs a cluster, a container engine or the scripts: the
manifests are validated offline against the Kubernetes object schemas that
the ``kubernetes-validate`` package ships, the shell is checked by ``sh -n``
(and ShellCheck where installed), and every ``binfmt`` command line in
deploy/ is parsed by the CLI's own argument parser, so that renaming an
option breaks this test rather than a node.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple, Optional

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from binfmt import qemu
from binfmt.cli import build_parser
from binfmt.entry import Flags
from binfmt.host import Host
from binfmt.procfs import State
from binfmt.report import nfd_features
from binfmt.testing import require_or_skip

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DAEMONSET = DEPLOY / "daemonset.yaml"
EXAMPLE_POD = DEPLOY / "nfd-example-pod.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
USER_DATA = DEPLOY / "eks-user-data.sh"

#: The host's binfmt_misc, seen from a hostPID container.
HOST_PROCFS = "/proc/1/root/proc/sys/fs/binfmt_misc"
#: node-feature-discovery's local feature directory (its worker's default).
NFD_DIR = "/etc/kubernetes/node-feature-discovery/features.d"
#: The oldest Kubernetes the manifests target, and the newest the package knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


# -- reading deploy/ ---------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.glob("*.yaml"), *DEPLOY.glob("*.yml")])


def _documents(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _all_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in _yaml_files():
        for doc in _documents(path):
            out.append(
                (f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc)
            )
    return out


def _daemonset() -> dict[str, Any]:
    (doc,) = [d for d in _documents(DAEMONSET) if d.get("kind") == "DaemonSet"]
    return doc


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _daemonset()["spec"]["template"]["spec"]
    return spec


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


class Invocation(NamedTuple):
    """One ``binfmt`` command line found in deploy/."""

    where: str
    argv: list[str]

    @property
    def command(self) -> str:
        return self.argv[0] if self.argv else ""

    def option(self, name: str) -> Optional[str]:
        """The value of ``--name VALUE`` or ``--name=VALUE``, or ``None``."""
        for i, word in enumerate(self.argv):
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
            if word == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
        return None


_PUNCTUATION = set("();<>|&")
_COMMAND_WORDS = {"exec", "if", "then", "else", "elif", "do", "while", "until", "!", "time"}
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


def _is_punctuation(word: str) -> bool:
    return bool(word) and set(word) <= _PUNCTUATION


def shell_invocations(script: str, where: str) -> list[Invocation]:
    """Every ``binfmt`` command in a shell script: its words up to the end of that command.

    Here-document bodies are skipped; ``2>&1`` and the like end a command.
    """
    found = []
    lines = script.replace("\\\n", " ").splitlines()
    heredoc_end: Optional[str] = None
    for line in lines:
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        match = _HEREDOC.search(line)
        if match:
            heredoc_end = match.group(1)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for i, word in enumerate(words):
            at_start = i == 0 or _is_punctuation(words[i - 1]) or words[i - 1] in _COMMAND_WORDS
            if not (at_start and os.path.basename(word) == "binfmt"):
                continue
            argv: list[str] = []
            for arg in words[i + 1 :]:
                if _is_punctuation(arg):
                    if arg[0] in "<>" and argv and argv[-1].isdigit():
                        argv.pop()  # the file descriptor of a redirection
                    break
                argv.append(arg)
            found.append(Invocation(where, argv))
    return found


def container_invocations(container: dict[str, Any], where: str) -> list[Invocation]:
    """The ``binfmt`` commands a container runs: exec form, or inside ``sh -c``."""
    words = [*container.get("command", []), *container.get("args", [])]
    name = f"{where}:{container['name']}"
    if words and os.path.basename(words[0]) == "binfmt":
        return [Invocation(name, words[1:])]
    if len(words) >= 3 and os.path.basename(words[0]) in ("sh", "bash") and words[1] == "-c":
        return shell_invocations(words[2], name)
    return []


def _shell_scripts() -> list[tuple[str, str]]:
    """Every ``sh -c`` script of the manifests, and the node script."""
    scripts = [(USER_DATA.name, USER_DATA.read_text(encoding="utf-8"))]
    for where, doc in _all_documents():
        spec = doc.get("spec", {})
        spec = spec.get("template", {}).get("spec", spec)
        for container in _containers(spec):
            words = container.get("command", [])
            if len(words) >= 3 and os.path.basename(words[0]) == "sh" and words[1] == "-c":
                scripts.append((f"{where}:{container['name']}", words[2]))
    return scripts


def _all_invocations() -> list[Invocation]:
    found = []
    for where, doc in _all_documents():
        spec = doc.get("spec", {})
        spec = spec.get("template", {}).get("spec", spec)
        for container in _containers(spec):
            found += container_invocations(container, where)
    found += shell_invocations(USER_DATA.read_text(encoding="utf-8"), USER_DATA.name)
    return found


def _by_container(name: str) -> list[Invocation]:
    (container,) = [c for c in _containers(_pod_spec()) if c["name"] == name]
    return container_invocations(container, DAEMONSET.name)


def _parse(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"binfmt's parser rejects: binfmt {shlex.join(argv)}")


# -- YAML and the Kubernetes schema -------------------------------------------------


def test_deploy_holds_the_documented_files() -> None:
    """deploy/ has the DaemonSet, the example pod, the image and the node script."""
    for path in (DAEMONSET, EXAMPLE_POD, DOCKERFILE, USER_DATA):
        assert path.is_file(), path


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_yaml_parses_into_kubernetes_objects(path: Path) -> None:
    """Every YAML file parses, and each document names its apiVersion, kind and name."""
    docs = _documents(path)
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), [pytest.param(w, d, id=w) for w, d in _all_documents()])
def test_documents_validate_strictly_against_the_kubernetes_schema(
    where: str, doc: dict[str, Any], version: str
) -> None:
    """Each document is a valid object of that Kubernetes version; unknown fields are errors."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(
            f"{where} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}"
        )


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The schema check can fail: a misspelt field of the DaemonSet is refused."""
    doc = _daemonset()
    doc["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


# -- the DaemonSet ------------------------------------------------------------------


def test_daemonset_runs_on_every_linux_node() -> None:
    """kube-system, system-node-critical, every Linux node, every taint tolerated."""
    ds = _daemonset()
    spec = _pod_spec()
    assert ds["metadata"]["namespace"] == "kube-system"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # One toleration with operator Exists and no key or effect matches every taint.
    assert {"operator": "Exists"} in spec["tolerations"]


def test_daemonset_shares_the_hosts_pid_and_user_namespaces() -> None:
    """hostPID (so /proc/1/root is the host's root) and explicitly no user namespace."""
    spec = _pod_spec()
    assert spec["hostPID"] is True
    assert spec["hostUsers"] is True


def test_daemonset_containers_are_privileged_and_bounded() -> None:
    """Every container is privileged, runs the one image, and has small requests and limits."""
    containers = _containers(_pod_spec())
    assert len({c["image"] for c in containers}) == 1
    for c in containers:
        assert c["securityContext"]["privileged"] is True, c["name"]
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, (c["name"], kind)


def test_daemonset_installs_then_verifies_before_it_loops() -> None:
    """Init containers: install (F, static QEMU, all), then verify; the loop installs the same."""
    spec = _pod_spec()
    assert [c["name"] for c in spec["initContainers"]] == ["install", "verify"]
    (install,) = _by_container("install")
    assert install.command == "install"
    assert install.argv[-1] == "all"
    assert "--persistent" in install.argv
    assert install.option("--qemu-path") == "/usr/bin"
    assert install.option("--qemu-suffix") == "-static"
    (verify,) = _by_container("verify")
    assert verify.command == "verify"
    loop = _by_container("keep-registered")
    assert [i.command for i in loop] == ["install", "status"]
    # The same registrations, silent when nothing changes.
    assert [a for a in loop[0].argv if a != "--quiet"] == install.argv
    assert "--quiet" in loop[0].argv


def test_daemonset_uses_only_the_hosts_binfmt_misc() -> None:
    """Every binfmt command of the DaemonSet reads and writes the host's mount, never its own."""
    invocations = [i for c in _containers(_pod_spec()) for i in _by_container(c["name"])]
    assert invocations
    for invocation in invocations:
        assert invocation.option("--procfs") == HOST_PROCFS, invocation


def test_daemonset_verifies_in_the_images_empty_root() -> None:
    """verify runs chrooted into a directory the image creates, where no QEMU is."""
    (verify,) = _by_container("verify")
    rootfs = verify.option("--rootfs")
    assert rootfs is not None
    assert re.search(rf"\bmkdir\s+(-p\s+)?{re.escape(rootfs)}\b", DOCKERFILE.read_text())


def test_daemonset_writes_the_nfd_feature_file_into_the_hosts_features_d() -> None:
    """The status --format nfd output lands in NFD's features.d, a hostPath at the same path."""
    spec = _pod_spec()
    (status,) = [i for i in _by_container("keep-registered") if i.command == "status"]
    assert status.option("--format") == "nfd"
    output = status.option("--output")
    assert output is not None and os.path.dirname(output) == NFD_DIR
    (container,) = [c for c in spec["containers"] if c["name"] == "keep-registered"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (name,) = [n for n, path in mounts.items() if path == NFD_DIR]
    assert volumes[name]["hostPath"] == {"path": NFD_DIR, "type": "DirectoryOrCreate"}


def test_nfd_directory_is_the_one_the_cli_documents() -> None:
    """status --output's help names the same features.d directory as the manifest."""
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    status = commands.choices["status"]
    (output,) = [a for a in status._actions if "--output" in a.option_strings]
    assert f"{NFD_DIR}/binfmt" in re.sub(r"\s+", "", output.help or "")


# -- the example pod ----------------------------------------------------------------


def _arm64_label() -> str:
    """The NFD label of linux/arm64, as the DaemonSet's feature file makes it."""
    return "feature.node.kubernetes.io/binfmt.linux-arm64"


@pytest.mark.parametrize(
    "node",
    [
        pytest.param(
            (Host("aarch64", "6.1.0", ("aarch64",)), State("/p", mounted=False)), id="native"
        ),
        pytest.param(
            (
                Host("x86_64", "6.1.0", ("x86_64", "i386")),
                State(
                    "/p",
                    mounted=True,
                    enabled=True,
                    entries=(
                        qemu.get("aarch64").to_entry(
                            "/usr/bin/qemu-aarch64-static", Flags.from_letters("F")
                        ),
                    ),
                ),
            ),
            id="emulated",
        ),
    ],
)
def test_example_pod_label_is_written_on_native_and_emulating_nodes(
    node: tuple[Host, State],
) -> None:
    """The feature file of an arm64 node and of an amd64 node emulating arm64 gives the label."""
    host, state = node
    prefix = "feature.node.kubernetes.io/"
    labels = [
        prefix + line.split("=", 1)[0]
        for line in nfd_features(state, host).splitlines()
        if line and not line.startswith("#")
    ]
    assert _arm64_label() in labels


def test_example_pod_requires_the_arm64_label() -> None:
    """The example pod needs a node labelled as running linux/arm64, and runs uname -m."""
    (pod,) = _documents(EXAMPLE_POD)
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert {"key": _arm64_label(), "operator": "In", "values": ["true"]} in [
        expr for term in terms for expr in term["matchExpressions"]
    ]
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith("arm64v8/")
    assert container["command"] == ["uname", "-m"]


# -- the image ----------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _apt_installed(instructions: list[tuple[str, str]]) -> list[str]:
    words: list[str] = []
    for keyword, rest in instructions:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            argv = shlex.split(command)
            if argv[:2] == ["apt-get", "install"]:
                words += [w for w in argv[2:] if not w.startswith("-")]
    return words


def test_dockerfile_installs_static_qemu_without_binfmt_support() -> None:
    """Debian slim, qemu-user-static and Python, no recommends, binfmt-support refused."""
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    packages = _apt_installed(instructions)
    assert {"qemu-user-static", "python3", "python3-venv"} <= set(packages)
    # "binfmt-support-" asks apt not to install it; the bare name would install it.
    assert "binfmt-support" not in packages
    run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "--no-install-recommends" in run


def test_dockerfile_installs_binfmt_from_the_build_context() -> None:
    """The package is built from the copied sources into a venv, whose binfmt is the entrypoint."""
    instructions = _dockerfile_instructions()
    copied = []
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = shlex.split(rest)
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert readme and readme.group(1) in copied, "the package build needs its readme"
    assert "binfmt" in copied
    run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "python3 -m venv /opt/binfmt" in run
    assert "/opt/binfmt/bin/pip install --no-cache-dir /src" in run
    entrypoint = [yaml.safe_load(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == [["/opt/binfmt/bin/binfmt"]]
    (cmd,) = [yaml.safe_load(rest) for keyword, rest in instructions if keyword == "CMD"]
    _parse(cmd)


# -- the node script ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "script"), [pytest.param(w, s, id=w) for w, s in _shell_scripts()]
)
def test_shell_scripts_parse(where: str, script: str) -> None:
    """sh -n accepts the node script and every sh -c script of the manifests."""
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, f"{where}: {result.stderr}"


@pytest.mark.parametrize(
    ("where", "script"), [pytest.param(w, s, id=w) for w, s in _shell_scripts()]
)
def test_shell_scripts_pass_shellcheck(where: str, script: str) -> None:
    """ShellCheck (POSIX sh) finds nothing in the node script and the manifests' scripts."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        require_or_skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--shell=sh", "-"], input=script, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"


def test_user_data_registers_what_the_daemonset_registers() -> None:
    """Same targets, paths and flags as the DaemonSet, then verify, then export to binfmt.d."""
    found = shell_invocations(USER_DATA.read_text(encoding="utf-8"), USER_DATA.name)
    assert [i.command for i in found] == ["install", "verify", "export"]
    install, verify, export = found
    (daemonset_install,) = _by_container("install")
    without_procfs = list(daemonset_install.argv)
    index = without_procfs.index("--procfs")
    del without_procfs[index : index + 2]
    assert install.argv == without_procfs
    assert verify.option("--rootfs")
    assert "--current" in export.argv
    assert export.option("--dir") == "/etc/binfmt.d"


# -- every binfmt command line --------------------------------------------------------


def test_invocations_are_found() -> None:
    """The extraction sees every binfmt command of deploy/ (so the next test is not vacuous)."""
    commands = sorted(i.command for i in _all_invocations())
    assert commands == sorted(
        ["install", "verify", "install", "status", "install", "verify", "export", "metrics"]
    )


@pytest.mark.parametrize("invocation", _all_invocations(), ids=lambda i: f"{i.where}:{i.command}")
def test_invocation_parses_with_the_cli_parser(invocation: Invocation) -> None:
    """Each binfmt command line in deploy/ is accepted by binfmt's own argument parser."""
    args = _parse(invocation.argv)
    assert getattr(args, "handler", None) is not None, invocation


# -- metrics (issue 14) ----------------------------------------------------------------------

#: node-exporter's textfile collector directory, as the DaemonSet mounts it from the host.
TEXTFILE_DIR = "/var/lib/node_exporter/textfile_collector"


def test_daemonset_writes_metrics_for_node_exporters_textfile_collector() -> None:
    """metrics reads the host's processes and pods and writes a *.prom file into a hostPath."""
    spec = _pod_spec()
    (metrics,) = _by_container("metrics")
    assert metrics.command == "metrics"
    assert metrics.option("--host-root") == "/proc/1/root"
    assert "--verify" in metrics.argv
    output = metrics.option("--output")
    assert output is not None and output.endswith(".prom")
    assert os.path.dirname(output) == TEXTFILE_DIR
    (container,) = [c for c in spec["containers"] if c["name"] == "metrics"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (name,) = [n for n, path in mounts.items() if path == TEXTFILE_DIR]
    assert volumes[name]["hostPath"] == {"path": TEXTFILE_DIR, "type": "DirectoryOrCreate"}
