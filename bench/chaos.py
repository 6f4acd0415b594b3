"""Chaos check: 16 clients mix stores, batches, searches, PATCHes, DELETEs, links and
PATCH-versus-DELETE races against a real `sfm serve` for a bounded time; then the server is
stopped and the outcome checked:

- no 5xx answer;
- no deleted memory is fetchable, nor found by any text it ever had;
- every acknowledged, undeleted memory is fetchable and found by its current text;
- `sfm doctor` finds the index true to SQL (no orphaned, missing or stale vectors).

    .venv/bin/python bench/chaos.py [--backend embedded|postgres+redis] [--seconds 60]
        [--clients 16] [--out docs/benchmarks.md]

The report replaces the `chaos-<backend>` section of --out. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import run  # bench/run.py

NAMESPACES = 4
CHECKED = 300


@dataclass
class Book:
    """What the clients saw: acknowledged ids, deletes, every text an id ever had."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    live: dict[str, str] = field(default_factory=dict)  # id -> namespace
    deleted: set[str] = field(default_factory=set)
    texts: dict[str, list[str]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)

    def answer(self, what: str, response: httpx.Response) -> httpx.Response:
        with self.lock:
            self.statuses[f"{what} {response.status_code}"] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{what}: {response.status_code} {response.text[:200]}")
        return response

    def stored(self, memory_id: str, namespace: str, token: str) -> None:
        with self.lock:
            self.live[memory_id] = namespace
            self.texts.setdefault(memory_id, []).append(token)

    def pick(self, rng: random.Random) -> tuple[str, str] | None:
        with self.lock:
            ids = [i for i in self.live if i not in self.deleted]
            if not ids:
                return None
            chosen = rng.choice(ids)
            return chosen, self.live[chosen]


def token() -> str:
    return "tok" + uuid.uuid4().hex[:10]


def client_loop(base: str, number: int, until: float, book: Book) -> None:
    rng = random.Random(number)
    with httpx.Client(base_url=f"{base}/api/v2", timeout=60.0, trust_env=False) as http:

        def store(namespace: str) -> str | None:
            word = token()
            body = {"content": f"chaos memory {word}", "namespace": namespace}
            answer = book.answer("store", http.post("/memory/store", json=body))
            if answer.status_code != 200:
                return None
            book.stored(answer.json()["id"], namespace, word)
            return str(answer.json()["id"])

        def patch(memory_id: str) -> None:
            word = token()
            with book.lock:
                book.texts.setdefault(memory_id, []).append(word)
            body = {"content": f"chaos patched {word}", "metadata": {"n": rng.randint(0, 9)}}
            book.answer("patch", http.patch(f"/memory/{memory_id}", json=body))

        def delete(memory_id: str) -> None:
            answer = book.answer("delete", http.delete(f"/memory/{memory_id}"))
            if answer.status_code in (200, 404):
                with book.lock:
                    book.deleted.add(memory_id)

        while time.monotonic() < until:
            namespace = f"chaos-{rng.randrange(NAMESPACES)}"
            roll = rng.random()
            picked = book.pick(rng)
            if roll < 0.25 or picked is None:
                store(namespace)
            elif roll < 0.32:
                words = [token() for _ in range(5)]
                items = [{"content": f"chaos batch {w}", "namespace": namespace} for w in words]
                answer = book.answer("batch", http.post("/memory/batch", json={"memories": items}))
                if answer.status_code == 200:
                    for made, word in zip(answer.json()["memories"], words, strict=True):
                        book.stored(made["id"], namespace, word)
            elif roll < 0.55:
                body = {"query": f"chaos {token()}", "namespace": namespace, "top_k": 5}
                book.answer("search", http.post("/memory/search", json=body))
            elif roll < 0.70:
                patch(picked[0])
            elif roll < 0.82:
                delete(picked[0])
            elif roll < 0.88:
                other = book.pick(rng)
                if other is not None and other[0] != picked[0]:
                    body = {"target": other[0], "kind": "related"}
                    book.answer("link", http.post(f"/memory/{picked[0]}/links", json=body))
            else:  # the race the probe found: a PATCH and a DELETE of one memory at once
                victim = store(namespace)
                if victim is not None:
                    racer = threading.Thread(target=patch, args=(victim,))
                    racer.start()
                    time.sleep(rng.random() * 0.05)
                    with httpx.Client(base_url=f"{base}/api/v2", timeout=60.0) as second:
                        answer = book.answer("delete", second.delete(f"/memory/{victim}"))
                    if answer.status_code in (200, 404):
                        with book.lock:
                            book.deleted.add(victim)
                    racer.join()


def found(http: httpx.Client, namespace: str, word: str) -> list[str]:
    body = {"query": word, "namespace": namespace, "top_k": 10, "mode": "lexical"}
    answer = http.post("/memory/search", json=body)
    answer.raise_for_status()
    return [h["id"] for h in answer.json()["memories"]]


def check(base: str, book: Book, rng: random.Random) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {"resurrected": [], "lost": [], "unfindable": []}
    gone = sorted(book.deleted)
    kept = sorted(set(book.live) - book.deleted)
    with httpx.Client(base_url=f"{base}/api/v2", timeout=60.0, trust_env=False) as http:
        for memory_id in rng.sample(gone, min(CHECKED, len(gone))):
            if http.get(f"/memory/{memory_id}").status_code != 404:
                problems["resurrected"].append(memory_id)
                continue
            namespace = book.live.get(memory_id, "")
            if any(memory_id in found(http, namespace, w) for w in book.texts.get(memory_id, [])):
                problems["resurrected"].append(memory_id)
        for memory_id in rng.sample(kept, min(CHECKED, len(kept))):
            answer = http.get(f"/memory/{memory_id}")
            if answer.status_code != 200:
                problems["lost"].append(memory_id)
                continue
            word = answer.json()["content"].split()[-1]
            if memory_id not in found(http, answer.json()["namespace"], word):
                problems["unfindable"].append(memory_id)
    return problems


def doctor(env: dict[str, str]) -> tuple[bool, str]:
    done = subprocess.run(
        [run.sfm_command(), "doctor"], env=env, capture_output=True, text=True, timeout=1800
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=run.BACKENDS, default="embedded")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    book = Book()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="sfm-chaos-") as work, contextlib.ExitStack() as stack:
        config = Path(work) / "config.yaml"
        config.write_text("# bench/chaos.py: built-in defaults only\n")
        env = run.settings_env(Path(work) / "data", config, run.backend_env(args.backend, stack))
        with run.server(env, Path(work) / "server.log") as base:
            run.log(f"[chaos] {args.clients} clients for {args.seconds:.0f} s against {base}")
            until = time.monotonic() + args.seconds
            clients = [
                threading.Thread(target=client_loop, args=(base, n, until, book))
                for n in range(args.clients)
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            run.log(f"[chaos] {sum(book.statuses.values())} requests; checking")
            problems = check(base, book, random.Random(0))
        clean, report = doctor(env)
    failed = bool(book.server_errors or any(problems.values()) or not clean)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(book.statuses.items()))
    lines = [
        f"## Chaos check, backend `{args.backend}`",
        "",
        f"`bench/chaos.py --backend {args.backend} --seconds {args.seconds:.0f} --clients "
        f"{args.clients}`, {started:%Y-%m-%d %H:%M} UTC, code {run.revision()}, machine "
        f"{run.machine()['cpu']} ({run.machine()['cores']} cores). Clients mix stores, "
        "batches of 5, searches, PATCHes, DELETEs, links and PATCH-versus-DELETE races over "
        "4 shared namespaces; then up to "
        f"{CHECKED} deleted and {CHECKED} kept memories are checked, and `sfm doctor` runs.",
        "",
        "| check | result |",
        "|---|---|",
        f"| requests (by kind and status) | {statuses} |",
        f"| 5xx answers | {len(book.server_errors)} |",
        f"| deleted memories fetchable or found | {len(problems['resurrected'])} |",
        f"| acknowledged memories lost | {len(problems['lost'])} |",
        f"| acknowledged memories not found by their text | {len(problems['unfindable'])} |",
        f"| `sfm doctor` | {'clean' if clean else 'drift: ' + report.replace(chr(10), '; ')} |",
        f"| verdict | **{'FAILED' if failed else 'passed'}** |",
    ]
    body = "\n".join(lines)
    run.write_report(args.out, f"chaos-{args.backend}", body)
    print(body)
    for error in book.server_errors[:10]:
        print(error, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
