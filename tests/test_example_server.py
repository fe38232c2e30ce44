"""The example server kvd and its client kv, at each release (example_project/src at v0, and
the changes/ that take it to v1 and v2).

Each release is compiled here with plain gcc as the SConscript builds it (the store, store.c, in
libkvstore.so, which kvd loads from beside it; the SCons path is tested elsewhere, one test below
only checks that example_project/SConscript builds the programs and the library), started on an
ephemeral port and driven over real sockets and through kv.
"""

import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from exampletree import RELEASES, advance, checkout

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_project"
SERVER_SOURCES = ("main.c", "net.c", "protocol.c", "stats.c")
LIBRARY_SOURCES = ("store.c",)  # libkvstore.so
CFLAGS = [
    "-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
    "-ffunction-sections", "-fdata-sections",
]
# A build of v2 with the sanitizers runs the protocol tests too: an overflow or undefined
# behaviour there aborts kvd (or kv) and fails the test, instead of passing by luck.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
BUILDS = {"v0": ("v0", []), "v1": ("v1", []), "v2": ("v2", []), "v2-sanitized": ("v2", SANITIZE)}
# LeakSanitizer stops the world with ptrace at exit, which some containers refuse; kv and kvd
# allocate nothing but stdio buffers.
# The shim below is preloaded before the ASan runtime, which ASan would otherwise refuse.
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:verify_asan_link_order=0"}
TIMEOUT = 15.0
NOT_FOUND = {"v0": "NOT_FOUND", "v1": "ERR no such key", "v2": "ERR no such key"}


@dataclass
class Build:
    kvd: Path
    kv: Path
    objects: dict  # source file name -> its .o


def run_all(commands, cwd):
    """Run the commands in parallel; fail with gcc's message if one fails."""
    procs = [subprocess.Popen(c, cwd=cwd, stderr=subprocess.PIPE, text=True) for c in commands]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    for proc, command, err in zip(procs, commands, errors, strict=True):
        assert proc.returncode == 0, f"{' '.join(map(str, command))} failed:\n{err}"


def build_release(version, src, out, extra_flags=()):
    """Compile VERSION from a copy of its sources at SRC and link libkvstore.so, kvd (which
    finds the library beside it: rpath $ORIGIN) and kv into OUT.

    Every release is compiled from the same SRC path, so that paths recorded in the debug info
    are the same and an unchanged source must give a byte-identical object.
    """
    checkout(version, src)
    out.mkdir()
    sources = sorted(p.name for p in src.glob("*.c"))
    objects = {name: out / name.replace(".c", ".o") for name in sources}
    run_all([["gcc", *CFLAGS, *extra_flags, *(["-fPIC"] if name in LIBRARY_SOURCES else []),
              "-c", name, "-o", objects[name]] for name in sources], src)
    kvd, kv, library = out / "kvd", out / "kv", out / "libkvstore.so"
    run_all([["gcc", *extra_flags, "-shared", "-Wl,-soname,libkvstore.so", "-o", library,
              *(objects[name] for name in LIBRARY_SOURCES)]], src)
    run_all([
        ["gcc", *extra_flags, "-o", kvd, *(objects[name] for name in SERVER_SOURCES),
         f"-L{out}", "-lkvstore", "-Wl,-rpath,$ORIGIN"],
        ["gcc", *extra_flags, "-o", kv, objects["client.c"]],
    ], src)
    return Build(kvd, kv, objects)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kvd")
    return {name: build_release(version, root / "src", root / name, flags)
            for name, (version, flags) in BUILDS.items()}


def read_line(stream, timeout):
    """Read one line from a pipe, failing after TIMEOUT seconds instead of hanging."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and selector.select(left), f"no complete line in {timeout} s: {data!r}"
            byte = os.read(stream.fileno(), 1)  # one at a time: nothing past the line is eaten
            assert byte, f"end of output before a complete line: {data!r}"
            data += byte
    return data.decode()


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    version: str
    build: str  # a key of BUILDS


@pytest.fixture
def start_kvd(builds):
    """Start kvd releases on ephemeral ports; each is killed when the test ends."""
    procs = []

    def start(build):
        version = BUILDS[build][0]
        proc = subprocess.Popen(
            [builds[build].kvd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        procs.append(proc)
        banner = read_line(proc.stdout, TIMEOUT)
        prefix = f"kvd {version} listening on 127.0.0.1:"
        assert banner.startswith(prefix), banner
        port = int(banner[len(prefix):])
        assert 0 < port < 65536
        return Server(proc, port, version, build)

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT)
            proc.stdout.close()
            proc.stderr.close()


class Conn:
    """A client connection speaking kvd's line protocol."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed mid-reply: {line!r}"
        return line[:-1].decode()

    def request(self, line):
        self.send(line + "\n")
        return self.reply()

    def close(self):
        self.reader.close()
        self.sock.close()


@pytest.fixture
def connect():
    """Open connections to a port; all are closed when the test ends."""
    conns = []

    def open_conn(port):
        conns.append(Conn(port))
        return conns[-1]

    try:
        yield open_conn
    finally:
        for conn in conns:
            conn.close()


@pytest.fixture(params=BUILDS)
def server(request, start_kvd):
    return start_kvd(request.param)


def kv(builds, build, port, *args, stdin=None):
    return subprocess.run(
        [builds[build].kv, str(port), *args], input=stdin, capture_output=True, text=True,
        env=ENV, timeout=TIMEOUT)


# --- the protocol, in every release -----------------------------------------------------------

def test_commands(server, connect):
    conn = connect(server.port)
    assert conn.request("PING") == "PONG"
    assert conn.request("SET k v") == "OK"
    assert conn.request("GET k") == "VALUE v"
    assert conn.request("SET k new value") == "OK"
    assert conn.request("GET k") == "VALUE new value"
    assert conn.request("SET greeting hello, world") == "OK"
    assert conn.request("GET greeting") == "VALUE hello, world"
    assert conn.request("DEL k") == "OK"
    assert conn.request("GET k") == NOT_FOUND[server.version]
    assert conn.request("DEL k") == NOT_FOUND[server.version]
    assert conn.request("STATS") == "STATS gets=4 sets=3 dels=2 misses=2 keys=1"


def test_malformed_requests(server, connect):
    conn = connect(server.port)
    assert conn.request("FLY away") == "ERR unknown command"
    assert conn.request("ping") == "ERR unknown command"
    assert conn.request("") == "ERR unknown command"
    for line in ("GET", "GET a b", "SET a", "DEL", "PING now", "STATS all"):
        assert conn.request(line) == "ERR wrong number of arguments", line
    assert conn.request("PING") == "PONG"


def test_limits(server, connect):
    conn = connect(server.port)
    assert conn.request("SET v " + "x" * 63) == "OK"
    assert conn.request("GET v") == "VALUE " + "x" * 63
    assert conn.request("SET v " + "x" * 64) == "ERR too long"
    # REQUEST_MAX is 512 bytes with the '\n': a 511-byte line is a request, a 512-byte one is not.
    assert conn.request("SET w " + "y" * 505) == "ERR too long"
    conn.send("SET w " + "y" * 506 + "\nPING\n")
    assert conn.reply() == "ERR line too long"
    assert conn.reply() == "PONG"
    conn.send("z" * 5000 + "\nGET v\n")  # one reply for the whole over-long line
    assert conn.reply() == "ERR line too long"
    assert conn.reply() == "VALUE " + "x" * 63


def test_store_full(server, connect):
    conn = connect(server.port)
    # Keys of one width: none is a prefix of another, which v0 would confuse.
    conn.send("".join(f"SET key{i:04} {i}\n" for i in range(1025)))
    replies = [conn.reply() for _ in range(1025)]
    assert replies == ["OK"] * 1024 + ["ERR store full"]
    assert conn.request("SET key0007 seven") == "OK"  # existing keys can still change
    assert conn.request("STATS").endswith(" keys=1024")
    assert conn.request("DEL key0000") == "OK"
    assert conn.request("SET extra 1") == "OK"
    assert conn.request("GET key1000") == "VALUE 1000"
    assert conn.request("GET key0007") == "VALUE seven"


def test_partial_reads_and_line_ends(server, connect):
    conn = connect(server.port)
    for byte in b"SET a 1\nGET a\n":
        conn.send(bytes([byte]))
    assert conn.reply() == "OK"
    assert conn.reply() == "VALUE 1"
    conn.send("PI")
    conn.send("NG\r\nGET a\r\nSET b two\r")
    assert conn.reply() == "PONG"
    assert conn.reply() == "VALUE 1"
    conn.send("\n")
    assert conn.reply() == "OK"
    assert conn.request("GET b") == "VALUE two"  # the '\r' was a line end, not part of the value


def test_a_full_buffer_of_requests_is_answered(server, connect):
    # 64 requests fill kvd's 512-byte input buffer at once, and their replies overflow its
    # 4 kB output buffer: kvd must answer the rest once the first replies are out, without
    # waiting for more input (none comes).
    conn = connect(server.port)
    value = "v" * 63
    assert conn.request(f"SET big {value}") == "OK"
    conn.send("GET big\n" * 64)
    assert [conn.reply() for _ in range(64)] == [f"VALUE {value}"] * 64


# Every send() writes at most 7 bytes and every other one fails with EAGAIN; every other recv()
# reads at most 3 bytes.  The kernel may do all this at any time, but on loopback it almost never
# does: this makes kvd's output back up while whole buffers of requests keep arriving.
SHORT_IO_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    static ssize_t (*real_send)(int, const void *, size_t, int);
    static unsigned calls;

    if (real_send == NULL)
        real_send = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    if (++calls % 2 == 0) {
        errno = EAGAIN;
        return -1;
    }
    return real_send(fd, buf, len < 7 ? len : 7, flags);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    static ssize_t (*real_recv)(int, void *, size_t, int);
    static unsigned calls;

    if (real_recv == NULL)
        real_recv = (ssize_t (*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
    return real_recv(fd, buf, ++calls % 2 == 0 || len < 3 ? len : 3, flags);
}
"""


@pytest.fixture(scope="module")
def short_io_shim(tmp_path_factory):
    root = tmp_path_factory.mktemp("shim")
    (root / "short_io.c").write_text(SHORT_IO_SHIM)
    run_all([["gcc", "-shared", "-fPIC", "-Wall", "-Werror", "-o", "short_io.so", "short_io.c",
              "-ldl"]], root)
    return root / "short_io.so"


@pytest.mark.parametrize("build", ["v0", "v2-sanitized"])
def test_short_reads_and_writes(builds, short_io_shim, build):
    # With short writes kvd's output backs up: it must stop reading, keep every reply in order,
    # and after the client's end of stream still send all that is pending before closing.
    env = {**ENV, "LD_PRELOAD": str(short_io_shim)}
    proc = subprocess.Popen([builds[build].kvd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        port = int(read_line(proc.stdout, TIMEOUT).rsplit(":", 1)[1])
        value = "v" * 63
        requests = f"SET big {value}\n" + "GET big\n" * 300 + "BAD\n" + "x" * 600 + "\nPING\n"
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(requests.encode())
            sock.shutdown(socket.SHUT_WR)
            with sock.makefile("rb") as reader:
                replies = reader.read()
        expected = ["OK", *[f"VALUE {value}"] * 300, "ERR unknown command", "ERR line too long",
                    "PONG"]
        assert replies == "".join(line + "\n" for line in expected).encode()
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


def test_half_closed_client_gets_its_replies(server, connect):
    conn = connect(server.port)
    conn.send("SET a 1\nGET a\nPING")  # the last line never ends: it is not a request
    conn.sock.shutdown(socket.SHUT_WR)
    assert conn.reader.read() == b"OK\nVALUE 1\n"


def test_clients_that_vanish_do_not_hurt_the_server(server, connect):
    gone = connect(server.port)
    assert gone.request("SET a 1") == "OK"
    gone.send("GET a\nSET b")
    gone.send("PING\n" * 20000)  # replies it will never read
    gone.close()
    conn = connect(server.port)
    assert conn.request("GET a") == "VALUE 1"
    assert conn.request("GET b") == NOT_FOUND[server.version]
    assert server.proc.poll() is None


def test_many_clients_at_once(server, connect):
    conns = [connect(server.port) for _ in range(40)]
    # Requests sent in one order and answered in another: a server serving one client at a time
    # would block on the first connection, which does not finish its line until the end.
    conns[0].send("SET key00 ")
    for i, conn in reversed(list(enumerate(conns[1:], 1))):
        assert conn.request(f"SET key{i:02} value{i}") == "OK"
    conns[0].send("value0\n")
    assert conns[0].reply() == "OK"
    for i, conn in enumerate(conns):
        j = (i + 1) % 40
        assert conn.request(f"GET key{j:02}") == f"VALUE value{j}"

    def worker(n):
        conn = Conn(server.port)
        try:
            for i in range(200):
                assert conn.request(f"SET w{n} {i}") == "OK"
                assert conn.request(f"GET w{n}") == f"VALUE {i}"
        finally:
            conn.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert conns[0].request("STATS") == "STATS gets=1640 sets=1640 dels=0 misses=0 keys=48"


def test_connections_beyond_the_limit_are_refused(server, connect):
    conns = [connect(server.port) for _ in range(64)]
    for conn in conns:  # each is accepted and served
        assert conn.request("PING") == "PONG"
    extra = connect(server.port)
    assert extra.reply() == "ERR server busy"
    assert extra.reader.read() == b""
    conns[0].close()
    # kvd frees the slot when it sees the close; retry until it has.  A refused connection may
    # also end in a reset: kvd closes it without reading the PING.
    deadline = time.monotonic() + TIMEOUT
    reply = None
    while reply != "PONG" and time.monotonic() < deadline:
        conn = connect(server.port)
        try:
            reply = conn.request("PING")
        except (OSError, AssertionError) as error:
            reply = repr(error)
    assert reply == "PONG"


def test_signals_end_kvd_cleanly(server, connect):
    conn = connect(server.port)
    assert conn.request("SET a 1") == "OK"
    assert conn.request("GET a") == "VALUE 1"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(TIMEOUT) == 0
    assert server.proc.stdout.read() == b""  # nothing after the banner: stdout stays quiet
    assert server.proc.stderr.read() == b""


def test_sigint_ends_kvd_cleanly(start_kvd):
    server = start_kvd("v0")
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(TIMEOUT) == 0


@pytest.mark.parametrize("args", [["abc"], ["-1"], [" 80"], ["70000"], ["1", "2"]])
def test_kvd_usage_errors(builds, args):
    result = subprocess.run([builds["v0"].kvd, *args], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "usage: kvd [PORT]\n"


def test_kvd_reports_a_busy_port(builds):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([builds["v0"].kvd, str(port)], capture_output=True, text=True,
                                timeout=TIMEOUT)
    assert result.returncode == 1
    assert result.stderr.startswith(f"kvd: cannot listen on 127.0.0.1:{port}: ")


def test_kvd_listens_on_the_given_port(builds):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([builds["v1"].kvd, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert read_line(proc.stdout, TIMEOUT) == f"kvd v1 listening on 127.0.0.1:{port}\n"
        assert kv(builds, "v1", port, "PING").stdout == "PONG\n"
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


# --- what each release changes ----------------------------------------------------------------

def test_v0_lookup_matches_key_prefixes(start_kvd, connect):
    conn = connect(start_kvd("v0").port)
    assert conn.request("SET a 1") == "OK"
    assert conn.request("GET ab") == "VALUE 1"  # the bug: "a" is a prefix of "ab"
    assert conn.request("GET b") == "NOT_FOUND"
    assert conn.request("SET ab 2") == "OK"  # ...which overwrites "a"
    assert conn.request("GET a") == "VALUE 2"
    assert conn.request("STATS") == "STATS gets=3 sets=2 dels=0 misses=1 keys=1"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_v1_lookup_is_exact(start_kvd, connect, version):
    conn = connect(start_kvd(version).port)
    assert conn.request("SET a 1") == "OK"
    assert conn.request("GET ab") == "ERR no such key"
    assert conn.request("SET ab 2") == "OK"
    assert conn.request("GET a") == "VALUE 1"
    assert conn.request("GET ab") == "VALUE 2"
    assert conn.request("STATS") == "STATS gets=3 sets=2 dels=0 misses=1 keys=2"


BAD_KEYS = ["", "k" * 32, "a\tb", "a\x1bb", "a\x7fb"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_v1_rejects_bad_keys(start_kvd, connect, version):
    conn = connect(start_kvd(version).port)
    for key in BAD_KEYS:
        assert conn.request(f"SET {key} value") == "ERR bad key", repr(key)
    assert conn.request("SET " + "k" * 31 + " value") == "OK"
    assert conn.request("SET caf\xe9 value") == "OK"  # bytes >= 0x80 are not control characters
    assert conn.request("STATS") == "STATS gets=0 sets=2 dels=0 misses=0 keys=2"


def test_v0_accepts_bad_keys(start_kvd, connect):
    conn = connect(start_kvd("v0").port)
    assert conn.request("SET  empty") == "OK"
    assert conn.request("GET anything") == "VALUE empty"  # "" is a prefix of every key
    assert conn.request("SET " + "k" * 32 + " value") == "ERR too long"
    assert conn.request("SET a\tb value") == "OK"


def test_v2_counts_hits(start_kvd, connect):
    conn = connect(start_kvd("v2").port)
    assert conn.request("SET a 1") == "OK"
    assert conn.request("SET b 2") == "OK"
    assert conn.request("HITS a") == "HITS 0"
    for _ in range(3):
        assert conn.request("GET a") == "VALUE 1"
    assert conn.request("GET b") == "VALUE 2"
    assert conn.request("GET nope") == "ERR no such key"
    assert conn.request("HITS a") == "HITS 3"
    assert conn.request("HITS b") == "HITS 1"
    assert conn.request("SET a one") == "OK"  # a new value keeps the key's count
    assert conn.request("HITS a") == "HITS 3"
    assert conn.request("DEL a") == "OK"  # a deleted key starts again from zero
    assert conn.request("HITS a") == "ERR no such key"
    assert conn.request("SET a 1") == "OK"
    assert conn.request("HITS a") == "HITS 0"
    assert conn.request("HITS") == "ERR wrong number of arguments"
    assert conn.request("STATS") == "STATS gets=5 sets=4 dels=1 misses=1 keys=2"


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_hits_is_new_in_v2(start_kvd, connect, version):
    conn = connect(start_kvd(version).port)
    assert conn.request("HITS a") == "ERR unknown command"


# --- the README's sessions --------------------------------------------------------------------

def readme_sessions():
    """(version, [(kv arguments, expected output)]) for each session the README shows."""
    text = (EXAMPLE / "README.md").read_text()
    blocks = re.findall(r"<!-- session (v\d) -->\n```console\n(.*?)```", text, re.S)
    sessions = []
    for version, block in blocks:
        steps = []
        for line in block.splitlines():
            if line.startswith("$ "):
                command = shlex.split(line[2:])
                assert command[:2] == ["kv", "$PORT"], line
                steps.append((command[2:], ""))
            else:
                steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
        sessions.append((version, steps))
    return sessions


def test_readme_has_a_session_per_release():
    assert [version for version, _ in readme_sessions()] == ["v0", "v1", "v2"]


@pytest.mark.parametrize("version,steps", [pytest.param(*s, id=s[0]) for s in readme_sessions()])
def test_readme_sessions(builds, start_kvd, version, steps):
    port = start_kvd(version).port
    for args, expected in steps:
        result = kv(builds, version, port, *args)
        assert (result.returncode, result.stdout) == (0, expected), args


# --- kv, the client -----------------------------------------------------------------------------

def test_kv_sends_one_request(builds, server):
    b, port = server.build, server.port
    result = kv(builds, b, port, "SET", "greeting", "hello", "world")
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
    assert kv(builds, b, port, "GET", "greeting").stdout == "VALUE hello world\n"
    assert kv(builds, b, port, "SET", "a", "1").stdout == "OK\n"
    expected = {"v0": "VALUE 1\n", "v1": "ERR no such key\n", "v2": "ERR no such key\n"}
    assert kv(builds, b, port, "GET", "ab").stdout == expected[server.version]
    result = kv(builds, b, port, "NONSENSE")
    assert (result.returncode, result.stdout) == (0, "ERR unknown command\n")


@pytest.mark.parametrize("build", ["v2", "v2-sanitized"])
def test_kv_reads_requests_from_stdin(builds, start_kvd, build):
    port = start_kvd(build).port
    script = "SET a 1\nGET a\n" + "x" * 3000 + "\nHITS a\nGET nope"  # no '\n' at the end
    result = kv(builds, build, port, "-", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK\nVALUE 1\nERR line too long\nHITS 1\nERR no such key\n"
    assert kv(builds, build, port, "-", stdin="").stdout == ""


def test_kv_errors(builds):
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = kv(builds, "v0", port, "PING")
    assert result.returncode == 1
    assert result.stderr.startswith(f"kv: cannot connect to 127.0.0.1:{port}: ")
    for args in ([], ["PING"], ["0", "PING"], ["http", "PING"]):
        result = subprocess.run([builds["v0"].kv, *args], capture_output=True, text=True,
                                timeout=TIMEOUT)
        assert result.returncode == 2, args
        assert result.stderr.startswith("usage: kv PORT CMD [ARGS...]\n")


def test_kv_refuses_a_newline_in_an_argument(builds, server):
    result = kv(builds, server.build, server.port, "SET", "a", "1\nDEL a")
    assert result.returncode == 2
    assert result.stdout == ""


@pytest.mark.parametrize("answer,error", [
    (b"", "kv: connection closed before the reply\n"),
    (b"PO", "kv: connection closed before the reply\n"),
    (b"x" * 2000, "kv: reply line too long\n"),
])
def test_kv_reports_a_broken_reply(builds, answer, error):
    with socket.socket() as listener:  # a fake server: reads the request, answers, hangs up
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = subprocess.Popen([builds["v0"].kv, str(port), "PING"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                assert conn.recv(100) == b"PING\n"
                conn.sendall(answer)
            out, err = client.communicate(timeout=TIMEOUT)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(TIMEOUT)
    assert (client.returncode, out, err) == (1, "", error)


# --- the releases as a hot patch sees them ----------------------------------------------------

@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """version -> a directory holding the sources of that release."""
    root = tmp_path_factory.mktemp("trees")
    return {version: checkout(version, root / version) for version in RELEASES}


def changed_sources(trees, old, new):
    """Names of the files that differ between two releases' sources."""
    def contents(version):
        return {p.name: p.read_bytes() for p in trees[version].iterdir()}

    a, b = contents(old), contents(new)
    return {name for name in a.keys() | b.keys() if a.get(name) != b.get(name)}


def test_each_release_changes_only_what_it_says(trees):
    assert changed_sources(trees, "v0", "v1") == {"main.c", "protocol.c", "store.c"}
    assert changed_sources(trees, "v1", "v2") == {"main.c", "protocol.c", "store.c", "store.h"}


def sections(path):
    """Name -> bytes of the sections that code and data come from (debug info left out)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return {s.name: s.data() for s in elf.iter_sections()
                if s.name and not s.name.startswith((".debug", ".rela.debug"))
                and s.header.sh_type != "SHT_NOBITS"}


def differing_sections(old, new):
    a, b = sections(old), sections(new)
    return {name for name in a.keys() | b.keys() if a.get(name) != b.get(name)}


@pytest.mark.parametrize("old,new", [("v0", "v1"), ("v1", "v2")])
def test_unchanged_sources_compile_to_identical_objects(builds, trees, old, new):
    changed = changed_sources(trees, old, new)
    for source, obj in builds[old].objects.items():
        same = obj.read_bytes() == builds[new].objects[source].read_bytes()
        assert same == (source not in changed), source


def test_v1_changes_store_in_one_function_and_main_not_at_all(builds):
    old, new = builds["v0"].objects, builds["v1"].objects
    text = {s for s in differing_sections(old["store.c"], new["store.c"]) if s.startswith(".text")}
    assert text == {".text.lookup"}
    # main() never returns, so a patch that changed it could never apply: the version string
    # comes from kvd_version(), whose code and relocations stay the same; only the string it
    # points at differs.
    main_sections = sections(old["main.c"])
    assert {".text.startup.main", ".text.kvd_version"} <= main_sections.keys()
    assert differing_sections(old["main.c"], new["main.c"]) == {".rodata.kvd_version.str1.1"}


@pytest.mark.scons
def test_sconscript_builds_the_programs_and_the_library(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "example_project")
    advance(tmp_path, "v1")
    (tmp_path / "SConstruct").write_text(
        "programs = SConscript('example_project/SConscript', exports={'env': Environment()})\n"
        "print('PROGRAMS', ' '.join(sorted(str(p) for p in programs)))\n")
    result = subprocess.run([sys.executable, "-m", "SCons", "-Q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROGRAMS build/kv build/kvd build/libkvstore.so" in result.stdout
    assert "-O2 -Wall" in result.stdout
    assert "-soname,libkvstore.so" in result.stdout and "-lkvstore" in result.stdout
    proc = subprocess.Popen([tmp_path / "build/kvd"], stdout=subprocess.PIPE)
    try:
        assert read_line(proc.stdout, TIMEOUT).startswith("kvd v1 listening on 127.0.0.1:")
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        proc.stdout.close()
