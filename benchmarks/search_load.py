"""The search page under load: the real server (`hmpcl serve`, a child process on 127.0.0.1) with concurrent clients,
beside the bare batched encoder measured in the same run.

Two phases, each a bounded number of requests:
1. mixed: `--large-clients` clients each POST `--large-requests` uploads of a `--large-side`² PNG drawing (default
   7000², 49 MP: just under the 50 MP limit), in turn grey, RGB and palette with a transparent background
   (`--large-modes`), while `--small-clients` clients each POST `--small-requests` corpus-sized drawings to
   `/api/search`;
2. small only, `--rounds` times: `--throughput-clients` clients POST small drawings, for the server's images/s against
   the bare encoder's measured right before each round (this VM's speed drifts within minutes).

Prints per phase and kind: requests, requests/s, p50/p95 ms, status counts; the server's peak RSS (VmHWM of the
`hmpcl serve` process); and the bare encoder's images/s on the same pixels in memory (the ceiling) in three layouts:
one forward pass over all cores at the clients' batch (the conventional "bare batched encoder"), and two streams of half
the cores each (the server's default on a CPU) at that batch and at half of it. The corpus is the rendered demo
corpus (`benchmarks.demo_corpus`), the model efficientnet_lite0 with its ImageNet weights, saved as a safetensors file
the server loads with --model-checkpoint.

    python benchmarks/search_load.py                       # docs/BENCHMARKS.md's table
    python benchmarks/search_load.py --large-modes RGB --large-requests 3   # issue 30's load: three RGB uploads each
    python benchmarks/search_load.py --large-clients 4 --large-requests 1 --small-clients 2 --small-requests 3 \
        --throughput-clients 2 --throughput-requests 5 --large-side 1500     # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


LARGE_MODES = ("L", "RGB", "P")  # grey, RGB and palette PNGs (the palette one with a transparent background)


def large_png(side: int, mode: str = "L") -> bytes:
    """A side x side line drawing as PNG in `mode` (mostly white: a few MB at most, like a scanned sheet). "P" is a
    palette image whose white background is its transparent index, as some exports write them."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (side, side), 255)
    pen = ImageDraw.Draw(img)
    rng = np.random.default_rng(0)
    for _ in range(60):
        pen.line([tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(2)], fill=0, width=max(2, side // 500))
    buf = io.BytesIO()
    if mode == "P":
        img = img.convert("P")
        img.save(buf, format="PNG", compress_level=6, transparency=img.getpixel((0, 0)))
    else:
        img.convert(mode).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vmhwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader, writer, request: bytes) -> tuple[int, bool, bytes]:
    """One request on a keep-alive connection: (status, whether the server closes the connection, the body)."""
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, close = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    body = await reader.readexactly(length)
    return status, close, body


def run_clients(port: int, path: str, kinds: dict[str, tuple[int, int, list[bytes]]],
                timeout: float = 300.0) -> tuple[dict[str, list], float, float]:
    """kinds: name -> (clients, requests per client, bodies). Each client is one HTTP/1.1 keep-alive connection (as a
    browser or a service client holds), all on one asyncio loop with the requests' bytes built beforehand, so the
    load generator takes as little of the machine it shares with the server as it can. Returns the outcomes
    ((status or error, seconds, response body) per request), the phase's seconds and the CPU seconds this process
    spent on it."""
    import asyncio

    results: dict[str, list] = {name: [] for name in kinds}
    requests = {name: [_request(path, b) for b in bodies] for name, (_, _, bodies) in kinds.items()}

    async def client(name: str, n: int, offset: int, go: asyncio.Event) -> None:
        reader = writer = None
        await go.wait()
        for i in range(n):
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                status, close, body = await asyncio.wait_for(
                    _exchange(reader, writer, requests[name][(offset + i) % len(requests[name])]), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as exc:
                status, close, body = f"error: {type(exc).__name__}", True, b""
            results[name].append((status, time.perf_counter() - started, body))
            if close and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def phase() -> float:
        go = asyncio.Event()
        tasks = [asyncio.create_task(client(name, n, c * n, go))
                 for name, (clients, n, _) in kinds.items() for c in range(clients)]
        await asyncio.sleep(0)  # every client waits at the start line
        began = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - began

    cpu = time.process_time()
    seconds = asyncio.run(phase())
    return results, seconds, time.process_time() - cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
        return json.load(r)


def summarise(phase: str, results: dict[str, list], seconds: float) -> list[str]:
    rows = []
    for name, outcomes in results.items():
        ms = np.array([t for _, t, _ in outcomes]) * 1000
        statuses = Counter(str(s) for s, _, _ in outcomes)
        # the server's own time from decode start to embedding (timing_ms.embed of the answers): the rest of a
        # request's time is HTTP, the event loop and the search
        embed = [json.loads(b)["timing_ms"]["embed"] for s, _, b in outcomes if s == 200]
        rows.append(f"| {phase} | {name} | {len(outcomes)} | {len(outcomes) / seconds:.1f} | "
                    f"{np.percentile(ms, 50):,.0f} | {np.percentile(ms, 95):,.0f} | "
                    f"{np.percentile(embed, 95) if embed else float('nan'):,.0f} | "
                    + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) + " |")
    return rows


def bare_encoder_rate(model, drawings: list[bytes], batch: int, streams: int = 1, repeats: int = 3,
                      seconds: float = 2.0) -> float:
    """Images/s of the encoder alone on the queries' own eval pixels held in memory, `batch` at a time, in `streams`
    threads that split the torch threads between them (1: one forward pass over all cores): the median of `repeats`
    windows of `seconds`, each window the sum over the streams."""
    import torch

    from hmpcl_lib.modeling.pixels import eval_batch
    from hmpcl_lib.retrieval.query_image import query_pixels

    config = model.config
    decoded = [query_pixels(d, config["image_size"]) for d in drawings[:batch]]
    pixels = np.stack([decoded[i % len(decoded)] for i in range(batch)])
    threads = max(1, torch.get_num_threads() // streams)

    def stream(out: list, go: threading.Barrier) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(eval_batch(pixels, config["mean"], config["std"]))  # warm-up
            go.wait()
            n, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                model(eval_batch(pixels, config["mean"], config["std"]))
                n += batch
            out.append(n / (time.perf_counter() - began))

    rates = []
    for _ in range(repeats):
        out: list[float] = []
        go = threading.Barrier(streams)
        workers = [threading.Thread(target=stream, args=(out, go)) for _ in range(streams)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(sum(out))
    return float(np.median(rates))


def ceilings(model, drawings: list[bytes], batch: int) -> dict[str, float]:
    """The bare encoder in the layouts a server can use: one forward pass over all cores at `batch`, and two streams
    of half the cores at `batch` and at half of it (what two streams get from `batch` clients)."""
    return {f"1 stream, batch {batch}": bare_encoder_rate(model, drawings, batch),
            f"2 streams, batch {batch}": bare_encoder_rate(model, drawings, batch, streams=2),
            f"2 streams, batch {max(1, batch // 2)}": bare_encoder_rate(model, drawings, max(1, batch // 2), streams=2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large-clients", type=int, default=32)
    p.add_argument("--large-requests", type=int, default=3)  # one upload of each mode per client
    p.add_argument("--large-side", type=int, default=7000)
    p.add_argument("--large-modes", nargs="+", default=list(LARGE_MODES), choices=LARGE_MODES,
                   help="the large uploads' PNG modes; each large client sends them in turn (default: all three)")
    p.add_argument("--small-clients", type=int, default=8)
    p.add_argument("--small-requests", type=int, default=20)
    p.add_argument("--throughput-clients", type=int, default=16)
    p.add_argument("--throughput-requests", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3, help="small-only rounds, each after its own ceiling measurement")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="the server's --batch-size")
    p.add_argument("--server-args", default="", help="more `hmpcl serve` flags, e.g. '--max-inflight-mp 50'")
    p.add_argument("--json-out", type=Path, default=None,
                   help="also write the server's idle and peak RSS and every phase's status counts here (JSON)")
    p.add_argument("--server-threads", type=int, default=None,
                   help="torch threads of the server (OMP_NUM_THREADS; default: torch's own, the cores)")
    args = p.parse_args(argv)
    import polars as pl
    import torch

    from hmpcl_lib.modeling.models import build_encoder, save_encoder_safetensors
    from benchmarks.demo_corpus import DEMO_SPEC, demo_searcher, write_demo_corpus

    print(f"$ python {' '.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])}\n"
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="hmpcl-load-") as tmp:
        layout = write_demo_corpus(tmp, DEMO_SPEC)
        model = build_encoder(embed_dim=None, weights="package", image_size=args.image_size).eval()
        index_dir = Path(tmp) / "index"
        demo_searcher(layout, model, index_dir)
        weights = save_encoder_safetensors(model, Path(tmp) / "encoder.safetensors")
        small = [Path(x).read_bytes() for x in pl.read_parquet(layout.hierarchy_path)["image_path"].to_list()]
        big = [large_png(args.large_side, mode) for mode in args.large_modes]
        ceiling_batch = min(32, args.throughput_clients)  # the largest batch the clients can form (whatever the
        # server's --batch-size: a smaller server batch does not lower the bar)
        port = free_port()
        command = [sys.executable, "-m", "hmpcl_lib.cli", "serve", "--host", "127.0.0.1", "--port",
                   str(port), "--data-root", tmp, "--model-checkpoint", str(weights), "--index", str(index_dir),
                   "--batch-size", str(args.batch_size), *args.server_args.split()]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.server_threads)} if args.server_threads else {})}
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                  env=env)
        try:
            deadline = time.monotonic() + 300
            while True:  # wait for /healthz, or for the server to die
                if server.poll() is not None:
                    raise SystemExit(f"hmpcl serve exited ({server.returncode}):\n{server.stdout.read()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                        json.load(r)
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    if time.monotonic() > deadline:
                        raise SystemExit("hmpcl serve did not answer /healthz within 300 s") from None
                    time.sleep(0.5)
            threading.Thread(target=server.stdout.read, daemon=True).start()  # drain the log
            path = "/api/search?k=12"
            idle_kib = vmhwm_kib(server.pid)
            mixed, mixed_s, _ = run_clients(port, path, {
                f"large {args.large_side}² PNG ({'/'.join(args.large_modes)}; "
                f"{'/'.join(f'{len(b) / 2**20:.1f}' for b in big)} MB)": (args.large_clients, args.large_requests, big),
                "small drawing": (args.small_clients, args.small_requests, small)})
            peak_kib = vmhwm_kib(server.pid)
            rounds = []  # (ceiling, served images/s, seconds, outcomes, passes, queries batched, client/server CPU s)
            for _ in range(args.rounds):  # the ceiling right before each round: this VM's speed drifts within minutes
                bare = ceilings(model, small, ceiling_batch)
                before, server_cpu = health(port), cpu_seconds(server.pid)
                only, only_s, client_cpu = run_clients(port, path, {"small drawing": (
                    args.throughput_clients, args.throughput_requests, small)})
                after, server_cpu = health(port), cpu_seconds(server.pid) - server_cpu
                served = sum(1 for s, *_ in only["small drawing"] if s == 200)
                rounds.append((bare, served / only_s, only_s, only, after["batches"] - before["batches"],
                               after["batched_queries"] - before["batched_queries"], client_cpu, server_cpu))
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    if args.json_out is not None:
        phases = {"mixed": mixed, **{f"round {i}": r[3] for i, r in enumerate(rounds, start=1)}}
        args.json_out.write_text(json.dumps({"idle_kib": idle_kib, "peak_kib": peak_kib, "statuses": {
            phase: {name: dict(Counter(str(s) for s, _, _ in outcomes)) for name, outcomes in results.items()}
            for phase, results in phases.items()}}, indent=1))
    rows = ["| phase | requests of | n | requests/s | p50 ms | p95 ms | p95 ms in the server's decode + embed | statuses |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    rows += summarise(f"{args.large_clients} large + {args.small_clients} small clients", mixed, mixed_s)
    for i, (_, _, seconds, outcomes, *_) in enumerate(rounds, start=1):
        rows += summarise(f"{args.throughput_clients} small clients, round {i}", outcomes, seconds)
    print("\n".join(rows))
    print(f"\nserver peak RSS (VmHWM): {peak_kib / 2**20:.2f} GiB after the mixed phase "
          f"({idle_kib / 2**20:.2f} GiB when ready: + {(peak_kib - idle_kib) / 2**20:.2f} GiB; the bound is + 1 GiB)\n")
    layouts = list(rounds[0][0])
    print("| round | " + " | ".join(f"bare: {name}" for name in layouts) + " | server images/s | ratio to the best bare "
          "| forward passes | queries per pass | load generator CPU | server CPU ms per query |\n|---:|"
          + "---:|" * (len(layouts) + 6))
    cores = os.cpu_count() or 1
    for i, (bare, served, seconds, _, batches, queries, client_cpu, server_cpu) in enumerate(rounds, start=1):
        print(f"| {i} | " + " | ".join(f"{bare[name]:.1f}" for name in layouts) + f" | {served:.1f} | "
              f"{served / max(bare.values()):.0%} | {batches} | {queries / max(1, batches):.1f} | "
              f"{client_cpu / (seconds * cores):.0%} of the machine | {1000 * server_cpu / max(1, queries):.1f} |")
    print(f"\n(the bare encoder: {1000 * cores / max(max(b.values()) for b, *_ in rounds):.1f} CPU ms per image at "
          "its best round, all cores busy)")
    conventional = layouts[0]  # one forward pass over all cores: "the bare batched encoder"
    to_one = sorted(served / bare[conventional] for bare, served, *_ in rounds)
    to_best = sorted(served / max(bare.values()) for bare, served, *_ in rounds)
    print(f"\nsmall-only throughput: median {np.median(to_one):.0%} of the bare batched encoder ({conventional}; rounds "
          + ", ".join(f"{r:.0%}" for r in to_one) + f"), median {np.median(to_best):.0%} of the best bare layout "
          "(rounds " + ", ".join(f"{r:.0%}" for r in to_best) + "); each ceiling measured in this process on the "
          "queries' own pixels in memory right before its round, while the server waits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
