#!/usr/bin/env python3
"""Redis CPU per job write, by how the write is made: a job of seven fields through a Lua
script, in MULTI/EXEC, or pipelined plainly; a job packed into one field; an HINCRBY.

Why: to tell what a delivery's Redis CPU is spent on (docs/benchmarks.md, sixth session).
Each figure is the server's own `used_cpu_user + used_cpu_sys` delta over 20,000 writes,
divided by the writes, so the client's speed does not enter it. No client library needed.

    python3 benches/scripts/redis_write_cost.py [port]   # a scratch redis-server: it writes exp:* keys
"""
import socket
import sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 6500
ROUNDS, PER_ROUND = 200, 100
BODY = "x" * 220
SCRIPT = """
local out = {}
local a = 3
for i = 1, tonumber(ARGV[1]) do
  out[i] = redis.call('XADD', KEYS[1], '*', 'w', ARGV[2], 'e', ARGV[a], 'r', ARGV[a + 1],
    'v', ARGV[a + 2], 't', 'member:created', 'k', '', 'b', ARGV[a + 3])
  a = a + 4
end
return out
"""

sock = socket.create_connection(("127.0.0.1", PORT))
reader = sock.makefile("rb")


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read():
    line = reader.readline()
    kind = line[:1]
    if kind in b"+-:":
        return line
    if kind == b"$":
        n = int(line[1:])
        return None if n < 0 else reader.read(n + 2)
    if kind == b"*":
        return [read() for _ in range(max(int(line[1:]), 0))]
    raise RuntimeError(f"unexpected reply {line!r}")


def call(*args):
    sock.sendall(enc(*args))
    return read()


def cpu():
    info = call("INFO", "cpu").decode()
    fields = dict(l.split(":", 1) for l in info.split("\r\n") if ":" in l)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def seven_fields(key, t, i):
    return ("XADD", key, "*", "w", "ws_1", "e", f"ep_{i}", "r", "1", "v", f"evt_{t}_{i}",
            "t", "member:created", "k", "", "b", BODY)


def packed(t, i):
    return ("XADD", "exp:packed", "*", "j",
            f"\t\tws_1\tep_{i}\t1\tevt_{t}_{i}\tmember:created\t0\t{BODY}")


def measure(kind, sha):
    before = cpu()
    for t in range(ROUNDS):
        if kind == "lua":
            args = ["EVALSHA", sha, "1", "exp:lua", str(PER_ROUND), "ws_1"]
            for i in range(PER_ROUND):
                args += [f"ep_{i}", "1", f"evt_{t}_{i}", BODY]
            call(*args)
            continue
        cmds = []
        for i in range(PER_ROUND):
            if kind == "multi":
                cmds.append(seven_fields("exp:multi", t, i))
            elif kind == "plain":
                cmds.append(seven_fields("exp:plain", t, i))
            elif kind == "packed":
                cmds.append(packed(t, i))
            else:
                cmds.append(("HINCRBY", "exp:counts", f"ws_1|ep_{i}|c", "1"))
        if kind == "multi":
            cmds = [("MULTI",)] + cmds + [("EXEC",)]
        sock.sendall(b"".join(enc(*c) for c in cmds))
        for _ in cmds:
            read()
    return (cpu() - before) / (ROUNDS * PER_ROUND) * 1e6


def main():
    sha = call("SCRIPT", "LOAD", SCRIPT).decode().strip()
    call("DEL", "exp:lua", "exp:multi", "exp:plain", "exp:packed", "exp:counts")
    kinds = ["lua", "multi", "plain", "packed", "hincrby"]
    runs = {k: [] for k in kinds}
    for _ in range(3):
        for k in kinds:
            runs[k].append(measure(k, sha))
    call("DEL", "exp:lua", "exp:multi", "exp:plain", "exp:packed", "exp:counts")
    for k in kinds:
        r = sorted(runs[k])
        print(f"{k:8} median {r[1]:5.2f} us of Redis CPU per write  (runs: "
              + ", ".join(f"{x:.2f}" for x in runs[k]) + ")")


main()
