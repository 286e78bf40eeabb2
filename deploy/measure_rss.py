"""The resident memory of each service under `outbox dev`: idle, then the peak over a
workload (3000 authenticated writes of ~0.6 KiB documents, a search every 100, until all
are searchable), sampled every 200 ms. The Kubernetes requests and limits in deploy/k8s and
compose's mem_limit derive from it (docs/deploying.md, "Resources").

    outbox dev --free-ports --data-dir /tmp/rss &          # note its PID
    python deploy/measure_rss.py PID /tmp/rss/endpoints.json /tmp/rss/dev-credentials

Needs the `bench` extra (httpx, psutil).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

SERVICES = ("api", "auth", "relay", "indexer")
WRITES = 3000


def service_processes(root: psutil.Process) -> dict[str, psutil.Process]:
    """The supervisor's children that run `outbox <service>`."""
    found = {}
    for process in root.children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        if command and command[-1] in SERVICES and "outbox" in " ".join(command):
            found[command[-1]] = process
    return found


def rss_mib(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


class PeakSampler(threading.Thread):
    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.peak = {name: rss_mib(p) for name, p in processes.items()}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for name, process in self.processes.items():
                try:
                    self.peak[name] = max(self.peak[name], rss_mib(process))
                except psutil.Error:
                    continue


def workload(api_url: str, username: str, password: str) -> int:
    """Write WRITES documents, then wait until search finds them all; the count found."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        login = client.post("/v1/auth/token", json={"username": username, "password": password})
        headers = {"authorization": f"Bearer {login.json()['access_token']}"}
        for i in range(WRITES):
            body = {"title": f"doc {i}", "body": "x" * 512, "n": i}
            written = client.post("/v1/collections/rss/documents", headers=headers, json=body)
            written.raise_for_status()
            if i % 100 == 0:
                client.get("/v1/collections/rss/search", params={"q": "doc"})
        deadline = time.monotonic() + 120
        total = 0
        while time.monotonic() < deadline and total < WRITES:
            found = client.get("/v1/collections/rss/search", params={"q": "doc", "size": 1})
            total = int(found.json()["total"])
            time.sleep(0.5)
        return total


def main() -> None:
    root = psutil.Process(int(sys.argv[1]))
    endpoints = json.loads(Path(sys.argv[2]).read_text())
    username, password = Path(sys.argv[3]).read_text().strip().split(":", 1)
    processes = service_processes(root)
    idle = {name: rss_mib(p) for name, p in processes.items()}
    sampler = PeakSampler(processes)
    sampler.start()
    indexed = workload(endpoints["api_url"], username, password)
    sampler.done.set()
    sampler.join()
    result = {"idle_mib": idle, "peak_mib": sampler.peak, "writes": WRITES, "indexed": indexed}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
