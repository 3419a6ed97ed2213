"""A training run talks to nothing but this machine: no packet leaves it except reverse lookups of
loopback addresses, and no Python code resolves or reverse-resolves anything else.

Two guards watch a tiny training launched as the pipeline launches it (``launch_and_wait``, one rank
and the DeepSpeed launcher with two):

- in Python, a ``sitecustomize`` on ``PYTHONPATH`` (so it loads in the launcher and every rank) wraps
  ``socket.socket.connect``/``connect_ex``/``sendto``, ``getaddrinfo``, ``gethostbyname(_ex)``,
  ``gethostbyaddr``, ``getnameinfo`` and ``getfqdn``, and records any non-loopback address and any
  reverse lookup;
- at the system-call level (where ``strace`` runs), every ``connect``/``sendto``/``sendmsg`` of every
  process and thread, and the question of every DNS query.

The one known exception is in C++, below Python: torch's c10d TCPStore (the rendezvous of
``torch.distributed``) formats each socket's address with ``getnameinfo()`` without
``NI_NUMERICHOST``. Its sockets are IPv6 (``::ffff:127.0.0.1``), which no hosts file lists, so glibc
asks DNS for the PTR record of ``1.0.0.127.in-addr.arpa``: one or two lookups per rank at start-up,
measured 2 for one rank and 4 for two. No environment setting of torch 2.13 avoids them; a one-rank
world could skip the TCPStore altogether (``init_process_group(store=HashStore())``). They are
allowed here, and nothing else is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from train_data import sft_data, tiny_model, write_config  # noqa: F401

from align_core import launch

pytestmark = pytest.mark.slow

GUARD = '''
"""alignflow test network guard: records socket calls that would leave the machine, and reverse lookups."""
import ipaddress, json, os, socket, traceback

_LOG = os.environ.get("ALIGNFLOW_NET_LOG")
_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _record(call, detail):
    stack = "".join(traceback.format_stack(limit=10)[:-2])
    with open(_LOG, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "call": call, "detail": repr(detail), "stack": stack}) + "\\n")


def _is_loopback(host):
    if host is None or (isinstance(host, str) and host.lower() in _LOCAL_NAMES):
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or address.is_unspecified or (mapped is not None and mapped.is_loopback)


def _host(sock, address):
    return address[0] if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) else None


if _LOG:
    with open(_LOG + ".loaded", "a") as loaded:  # proves the guard ran in this process
        loaded.write(f"{os.getpid()}\\n")
    _real = {name: getattr(socket, name) for name in
             ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "getfqdn")}

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            _record("getaddrinfo", host)
        return _real["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(host):
        if not _is_loopback(host):
            _record("gethostbyname", host)
        return _real["gethostbyname"](host)

    def gethostbyname_ex(host):
        if not _is_loopback(host):
            _record("gethostbyname_ex", host)
        return _real["gethostbyname_ex"](host)

    def gethostbyaddr(address):
        _record("gethostbyaddr", address)
        return _real["gethostbyaddr"](address)

    def getnameinfo(address, flags):
        if not flags & socket.NI_NUMERICHOST:
            _record("getnameinfo", address)
        return _real["getnameinfo"](address, flags)

    def getfqdn(name=""):
        _record("getfqdn", name)
        return _real["getfqdn"](name)

    for _name in _real:
        setattr(socket, _name, globals()[_name])

    class _GuardedSocket(socket.socket):
        def connect(self, address):
            if not _is_loopback(_host(self, address)):
                _record("connect", address)
            return super().connect(address)

        def connect_ex(self, address):
            if not _is_loopback(_host(self, address)):
                _record("connect_ex", address)
            return super().connect_ex(address)

        def sendto(self, data, *args):
            if not _is_loopback(_host(self, args[-1])):
                _record("sendto", args[-1])
            return super().sendto(data, *args)

    socket.socket = _GuardedSocket
'''

TRACED_CALLS = "connect,sendto,sendmsg,sendmmsg"
# One traced call: `PID name(FD, args...` (a call another thread interrupts ends in "<unfinished ...>").
CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>connect|sendto|sendmsg|sendmmsg)\((?P<fd>\d+), (?P<args>.*)$")
QUOTED = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
PORT = re.compile(r"(?:sin|sin6)_port=htons\((\d+)\)")
PTR = 12  # DNS query type of a reverse lookup


def _strings(args: str) -> list[bytes]:
    """The quoted strings of a traced call (strace -xx writes every byte as \\xNN)."""
    return [bytes.fromhex(text.replace("\\x", "")) for text in QUOTED.findall(args)]


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _dns_question(payload: bytes) -> tuple[str, int] | None:
    """(name, query type) of a DNS query over UDP."""
    position, labels = 12, []
    while position < len(payload) and payload[position]:
        length = payload[position]
        labels.append(payload[position + 1 : position + 1 + length].decode("ascii", "replace"))
        position += 1 + length
    if position + 3 > len(payload):
        return None
    return ".".join(labels), int.from_bytes(payload[position + 1 : position + 3], "big")


def _reverse_of_loopback(name: str) -> bool:
    name = name.lower().rstrip(".")
    try:
        if name.endswith(".in-addr.arpa"):
            return _is_loopback(".".join(reversed(name.removesuffix(".in-addr.arpa").split("."))))
        if name.endswith(".ip6.arpa"):
            nibbles = "".join(reversed(name.removesuffix(".ip6.arpa").split(".")))
            return _is_loopback(":".join(nibbles[i : i + 4] for i in range(0, 32, 4)))
    except ValueError:
        return False
    return False


def off_machine_traffic(trace: str) -> tuple[list[str], list[str]]:
    """From an ``strace -f -xx`` log: (traffic to anything but loopback, except the DNS sockets' queries;
    the DNS questions asked, as "name type")."""
    leaving, questions, dns_sockets = [], [], set()
    for line in trace.splitlines():
        match = CALL.match(line)
        if not match or "sa_family=AF_UNIX" in match["args"] or "sa_family=AF_UNSPEC" in match["args"]:
            continue
        key, args = (match["pid"], match["fd"]), match["args"]
        family = "AF_INET6" if "sa_family=AF_INET6" in args else "AF_INET" if "sa_family=AF_INET" in args else None
        strings = _strings(args)
        if family and match["call"] == "connect":
            address, port = strings[0].decode(), int(PORT.search(args)[1])
            if port == 53:
                dns_sockets.add(key)
            else:
                dns_sockets.discard(key)  # the fd number was closed and reused for another socket
                if not _is_loopback(address):
                    leaving.append(line)
            continue
        to_dns = key in dns_sockets and not family or (family and PORT.search(args) and int(PORT.search(args)[1]) == 53)
        if to_dns and match["call"] == "sendto" and strings:
            question = _dns_question(strings[0])
            questions.append(f"{question[0]} {question[1]}" if question else "(unreadable)")
        elif key in dns_sockets or (family and not _is_loopback(strings[-1].decode())):
            leaving.append(line)
    return leaving, questions


def strace_options() -> list[str] | None:
    """How strace follows the run: with a seccomp-bpf filter where this strace has one, so the processes stop
    only at the traced calls (a stop at every system call of every thread doubled the run's time); None where
    strace cannot run. The calls traced are the same either way."""
    if not shutil.which("strace"):
        return None
    for options in (["-f", "--seccomp-bpf"], ["-f"]):
        probe = ["strace", *options, "-qq", "-e", f"trace={TRACED_CALLS}", "-o", "/dev/null", "true"]
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return options
    return None


@pytest.mark.parametrize("nproc", [1, 2], ids=["one rank", "two ranks via the deepspeed launcher"])
def test_training_talks_only_to_this_machine(tmp_path, monkeypatch, tiny_model, sft_data, nproc):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    python_log, trace = tmp_path / "python-network.jsonl", tmp_path / "strace.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("ALIGNFLOW_NET_LOG", str(python_log))
    options = strace_options()
    traced = options is not None
    if traced:
        real_command = launch.launch_command
        prefix = ["strace", *options, "-qq", "-xx", "-s", "512", "-e", f"trace={TRACED_CALLS}", "-o", str(trace)]
        monkeypatch.setattr(launch, "launch_command", lambda *args, **kwargs: [*prefix, *real_command(*args, **kwargs)])
    config = write_config(tmp_path / "train.yaml", tiny_model, [sft_data], tmp_path / "run",
                          {"train_cfgs": {"max_steps": 2, "save_interval": 2}, "logger_cfgs": {"log_type": "none"}})

    result = launch.launch_and_wait(config, nproc=nproc, emit=lambda line: None)

    assert result["world_size"] == nproc and result["steps"] == 2
    guarded = set(Path(f"{python_log}.loaded").read_text().split())
    assert len(guarded) >= nproc  # the guard loaded in every rank (and the launcher's processes)
    records = [json.loads(line) for line in python_log.read_text().splitlines()] if python_log.exists() else []
    assert records == [], "Python resolved or reached beyond loopback:\n" + "\n".join(f"{r['call']}({r['detail']})\n{r['stack']}" for r in records)
    if not traced:
        pytest.skip("strace is not available here: only the Python-level guard ran")
    leaving, questions = off_machine_traffic(trace.read_text())
    assert leaving == []
    if nproc == 1:
        assert questions == []  # one rank rendezvous in process: not even a reverse lookup of loopback
    assert all(name_type.endswith(f" {PTR}") and _reverse_of_loopback(name_type.rsplit(" ", 1)[0]) for name_type in questions), questions


def test_the_trace_reader_tells_loopback_reverse_lookups_from_other_traffic():
    header = bytes.fromhex("12c001000001000000000000")
    ptr_query = header + b"\x011\x010\x010\x03127\x07in-addr\x04arpa\x00\x00\x0c\x00\x01"
    a_query = header + b"\x07example\x03com\x00\x00\x01\x00\x01"

    def sendto(payload: bytes) -> str:
        return "7 sendto(15, \"" + "".join(f"\\x{byte:02x}" for byte in payload) + "\", 40, MSG_NOSIGNAL, NULL, 0) = 40"

    def connect(address: str, port: int, family: str = "AF_INET") -> str:
        text = "".join(f"\\x{byte:02x}" for byte in address.encode())
        if family == "AF_INET":
            return f'7 connect(15, {{sa_family=AF_INET, sin_port=htons({port}), sin_addr=inet_addr("{text}")}}, 16) = 0'
        return f'7 connect(15, {{sa_family=AF_INET6, sin6_port=htons({port}), inet_pton(AF_INET6, "{text}", &sin6_addr)}}, 28) = 0'

    assert _dns_question(ptr_query) == ("1.0.0.127.in-addr.arpa", PTR)
    assert off_machine_traffic("\n".join([connect("10.0.0.53", 53), sendto(ptr_query)])) == ([], ["1.0.0.127.in-addr.arpa 12"])
    assert off_machine_traffic("\n".join([connect("10.0.0.53", 53), sendto(a_query)])) == ([], ["example.com 1"])
    assert off_machine_traffic(connect("::ffff:127.0.0.1", 29500, "AF_INET6")) == ([], [])
    assert off_machine_traffic(connect("93.184.216.34", 443))[0] != []
    assert _reverse_of_loopback("1.0.0.127.in-addr.arpa") and not _reverse_of_loopback("34.216.184.93.in-addr.arpa")
    assert _reverse_of_loopback("1" + ".0" * 31 + ".ip6.arpa")
