"""The fake training image's program: stands in for `python -m airtune.train` (and torchrun, and the
prepare step) in the emulator's lifecycle tests, so they take seconds, not minutes.

It behaves like the trainer where the operators can see it: it resumes from the newest
`checkpoint-<step>` in --output, writes a checkpoint per step (rank 0), `final/` and `result.json`
at the end, and exits 0; several machines (torchrun options) meet at the master address and port
over TCP first, so a wrong rendezvous address fails the job. `<job>/fake.json` steers it:

    {"steps": 4, "step_seconds": 0.05, "crash_at_step": 2, "crash_code": 3, "exit_code": 5,
     "hang": true, "fail_rank": 1}
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path


def opt(args: list[str], name: str, default=None):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def rendezvous(addr: str, port: int, rank: int, nnodes: int) -> None:
    """Rank 0 listens, the others connect (retrying while rank 0 starts), as torchrun's store does.
    In the emulator only an address it resolved (127.0.0.1) can be reached: any other name would
    need cluster DNS, so it fails here at once instead of waiting on this machine's resolver."""
    import ipaddress

    try:
        ipaddress.ip_address(addr)
    except ValueError:
        print(f"rendezvous failed: cannot resolve {addr} (no cluster DNS record)", flush=True)
        sys.exit(1)
    if rank == 0:
        srv = socket.create_server(("0.0.0.0", port), reuse_port=False)
        srv.settimeout(60)
        peers = []
        for _ in range(nnodes - 1):
            conn, _ = srv.accept()
            peers.append(int(conn.recv(16).decode()))
            conn.sendall(b"ok")
            conn.close()
        srv.close()
        print(f"rendezvous: rank 0 met ranks {sorted(peers)} on {addr}:{port}", flush=True)
        return
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection((addr, port), timeout=5) as s:
                s.sendall(str(rank).encode())
                assert s.recv(16) == b"ok"
            print(f"rendezvous: rank {rank} reached {addr}:{port}", flush=True)
            return
        except OSError as exc:  # rank 0 not listening yet; an unresolvable name never succeeds
            if time.monotonic() > deadline or isinstance(exc, socket.gaierror):
                print(f"rendezvous failed: {addr}:{port}: {exc}", flush=True)
                sys.exit(1)
            time.sleep(0.1)


def prepare(args: list[str]) -> int:
    out = Path(opt(args, "--out"))
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads(Path(opt(args, "--spec")).read_text())
    print(f"fake prepare of {spec['spec']['name']} into {out}", flush=True)
    fake = Path(opt(args, "--spec")).parent / "fake.json"
    if fake.exists() and json.loads(fake.read_text()).get("hang"):
        while True:
            time.sleep(1)
    (out / "manifest.json").write_text(json.dumps({"rows": {"train": 3}, "tokens": {"train": 30}, "stage": "sft"}))
    return 0


def main(args: list[str]) -> int:
    if args[:2] == ["-m", "airtune.launch.kubernetes.in_pod"]:
        return prepare(args)
    nnodes = int(opt(args, "--nnodes", 1))
    rank = int(opt(args, "--node_rank", 0))
    output = Path(opt(args, "--output"))
    job_dir = Path(opt(args, "--spec")).parent
    behave = json.loads((job_dir / "fake.json").read_text()) if (job_dir / "fake.json").exists() else {}
    print(f"fake trainer: rank {rank} of {nnodes}, pid {os.getpid()}, host {os.environ.get('HOSTNAME')}, "
          f"MLFLOW_RUN_ID={os.environ.get('MLFLOW_RUN_ID')}, HF_TOKEN set={bool(os.environ.get('HF_TOKEN'))}", flush=True)
    if "exit_code" in behave:
        print(f"failing with exit code {behave['exit_code']}", flush=True)
        return behave["exit_code"]
    if nnodes > 1:
        rendezvous(opt(args, "--master_addr"), int(opt(args, "--master_port")), rank, nnodes)
    if behave.get("fail_rank") == rank:
        print(f"rank {rank} fails", flush=True)
        return 7
    if behave.get("hang"):
        print("training (forever)", flush=True)
        while True:
            time.sleep(1)
    output.mkdir(parents=True, exist_ok=True)
    done = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    start = done[-1] if done else 0
    if start:
        print(f"resuming from {output / f'checkpoint-{start}'}", flush=True)
    for step in range(start + 1, int(behave.get("steps", 4)) + 1):
        time.sleep(float(behave.get("step_seconds", 0.05)))
        if rank == 0:
            (output / f"checkpoint-{step}").mkdir(exist_ok=True)
        print(f"step {step}", flush=True)
        if behave.get("crash_at_step") == step and not start:
            print(f"crash at step {step}", flush=True)
            return int(behave.get("crash_code", 3))
    if rank == 0:
        (output / "final").mkdir(exist_ok=True)
        (job_dir / "result.json").write_text(json.dumps({"global_step": int(behave.get("steps", 4)), "resumed_from": start}))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
