"""Load test of ``python -m minigpt4.serve``: batching on (``--max-batch-size 16``) vs off (``1``).

Both servers run side by side as subprocesses on 127.0.0.1; first 16 different images are asked
concurrently once (greedy) to compare the answers of both settings, then 1, 4 and 16 concurrent clients
each send streamed requests back to back for ``--duration`` seconds (requests in flight at the end are
waited for), alternating between the two servers for ``--rounds`` rounds (the median round is kept).
Reported per run: requests/s, completion tokens/s, p50/p95 latency and time to first token, and the
slowest ``/health`` answer while the load ran (polled every 0.25 s).

    python benchmarks/bench_serve.py --tiny-world tiny_world   # built by python -m minigpt4.tiny_world
    python benchmarks/bench_serve.py --cfg-path my.yaml --options model.ckpt=...
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

from cli_args import is_built_tiny_world, not_built, positive_float, positive_int, run_cli

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Describe this image in detail."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny-world", default=str(ROOT / "tiny_world"),
                   help="a built tiny world (python -m minigpt4.tiny_world --out DIR)")
    p.add_argument("--cfg-path", default=None, help="another eval config instead of the tiny world's")
    p.add_argument("--options", nargs="*", default=[], help="config overrides passed to the server")
    p.add_argument("--images", default=None, help="folder of images to ask about (default: the tiny world's eval set)")
    p.add_argument("--clients", type=positive_int, nargs="+", default=[1, 4, 16])
    p.add_argument("--duration", type=positive_float, default=15.0, help="seconds of load per run")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds; the median round is reported")
    p.add_argument("--max-tokens", type=positive_int, default=48)
    p.add_argument("--batch-size", type=positive_int, default=16, help="--max-batch-size of the batching server")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of the server")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve.json"))
    args = p.parse_args(argv)
    # the tiny world gives the model (without --cfg-path) and the images (without --images)
    missing = [flag for flag, given in (("--cfg-path", args.cfg_path), ("--images", args.images)) if not given]
    if missing and not is_built_tiny_world(args.tiny_world):
        p.error(f"argument --tiny-world: {not_built(args.tiny_world)} (or pass {' and '.join(missing)})")
    if args.images and not Path(args.images).is_dir():
        p.error(f"argument --images: {args.images} is not a folder")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_args(args) -> list[str]:
    if args.cfg_path:
        return ["--cfg-path", args.cfg_path] + (["--options", *args.options] if args.options else [])
    tw = Path(args.tiny_world)  # a built one (parse_args)
    sys.path.insert(0, str(ROOT))
    from minigpt4.tiny_world.pipeline import latest_checkpoint, model_paths

    ckpt = latest_checkpoint(tw / "runs/stage2/tiny")
    options = [f"{k}={v}" for k, v in model_paths(tw).items()] + [f"model.ckpt={ckpt}", *args.options]
    return ["--cfg-path", str(ROOT / "eval_configs/tiny_eval.yaml"), "--options", *options]


class Server:
    def __init__(self, args, batch_size: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "minigpt4.serve", *model_args(args), "--port", str(self.port),
               "--max-batch-size", str(batch_size), "--threads", str(args.threads), "--log-level", "warning",
               "--max-queue", "256"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)

    def __enter__(self):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench_serve: the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("bench_serve: the server did not come up in 300 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def image_urls(args) -> list[str]:
    folder = Path(args.images) if args.images else Path(args.tiny_world) / "data/eval/test"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:64]
    if not files:
        sys.exit(f"bench_serve: no images in {folder}")
    mime = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}
    return [f"data:image/{mime[f.suffix.lower()]};base64," + base64.b64encode(f.read_bytes()).decode() for f in files]


def messages(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTION}]}]


def one_request(http: httpx.Client, url: str, max_tokens: int) -> dict:
    """One streamed request, read as raw server-sent events (a light client, so the load is the server's)."""
    body = {"model": "minigpt4", "messages": messages(url), "temperature": 0, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, text, tokens, done = None, [], 0, False
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.read()[:200]!r}")
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                text.append(chunk["choices"][0]["delta"]["content"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if not done:
        raise RuntimeError("the stream ended without [DONE]")
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens, "text": "".join(text),
            "end": end}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None


class HealthWatch(threading.Thread):
    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.stop, self.times, self.failures = url, threading.Event(), [], 0

    def run(self):
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    ok = http.get(self.url + "/health").json()["status"] == "ok"
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                self.times.append(time.perf_counter() - t)
                self.failures += not ok
                self.stop.wait(0.25)


def run_load(server: Server, urls: list[str], clients: int, duration: float, max_tokens: int) -> dict:
    results, errors = [], []
    start = time.perf_counter()
    deadline = start + duration

    def client_loop(k):
        i = k
        with httpx.Client(base_url=server.url, timeout=600) as http:
            while time.perf_counter() < deadline:
                try:
                    results.append(one_request(http, urls[i % len(urls)], max_tokens))
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    errors.append(repr(exc))
                i += clients

    watch = HealthWatch(server.url)
    watch.start()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watch.stop.set()
    watch.join()
    elapsed = max(r["end"] for r in results) - start if results else duration
    return {"clients": clients, "requests": len(results), "errors": len(errors), "elapsed_s": round(elapsed, 2),
            "requests_per_s": round(len(results) / elapsed, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / elapsed, 1),
            "latency_p50_s": pct([r["latency"] for r in results], 0.5),
            "latency_p95_s": pct([r["latency"] for r in results], 0.95),
            "ttft_p50_s": pct([r["ttft"] for r in results], 0.5), "ttft_p95_s": pct([r["ttft"] for r in results], 0.95),
            "mean_completion_tokens": round(statistics.mean(r["tokens"] for r in results), 1) if results else 0,
            "health_checks": len(watch.times), "health_failures": watch.failures,
            "health_max_s": round(max(watch.times), 3) if watch.times else None}


def same_answers(server: Server, urls: list[str], max_tokens: int) -> list[str]:
    """16 different images asked at once, greedy: the text of each answer."""
    out = [None] * 16

    def ask(i):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        out[i] = client.chat.completions.create(model="minigpt4", messages=messages(urls[i % len(urls)]),
                                                temperature=0, max_tokens=max_tokens).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def median_run(runs: list[dict]) -> dict:
    """The round with the median requests/s (all its figures), plus every round's requests/s."""
    ordered = sorted(runs, key=lambda r: r["requests_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_requests_per_s": [r["requests_per_s"] for r in runs]}


def main(argv=None) -> int:
    args = parse_args(argv)
    urls = image_urls(args)
    report = {"config": dict(vars(args)), "runs": {}}
    settings = {"batching_on": args.batch_size, "batching_off": 1}
    # both servers run side by side (an idle one costs nothing) and the runs alternate, so a change in the
    # machine's load during the benchmark hits both settings alike
    with Server(args, settings["batching_on"]) as on_server, Server(args, 1) as off_server:
        servers = {"batching_on": on_server, "batching_off": off_server}
        answers = {name: same_answers(server, urls, args.max_tokens) for name, server in servers.items()}
        rounds = {(name, c): [] for name in servers for c in args.clients}
        for r in range(args.rounds):
            for clients in args.clients:
                for name, server in servers.items():
                    run = run_load(server, urls, clients, args.duration, args.max_tokens)
                    print(f"round {r} {name}", json.dumps(run), flush=True)
                    rounds[name, clients].append(run)
    for name, batch in settings.items():
        report["runs"][name] = {"max_batch_size": batch,
                                "runs": [median_run(rounds[name, c]) for c in args.clients]}
    on = {r["clients"]: r for r in report["runs"]["batching_on"]["runs"]}
    off = {r["clients"]: r for r in report["runs"]["batching_off"]["runs"]}
    report["greedy_outputs_equal"] = answers["batching_on"] == answers["batching_off"]
    report["distinct_answers_of_16"] = len(set(answers["batching_on"]))
    report["ratios_on_vs_off"] = {
        str(c): {"requests_per_s": round(on[c]["requests_per_s"] / off[c]["requests_per_s"], 2),
                 "tokens_per_s": round(on[c]["tokens_per_s"] / off[c]["tokens_per_s"], 2),
                 "latency_p50": round(on[c]["latency_p50_s"] / off[c]["latency_p50_s"], 2),
                 "ttft_p50": round(on[c]["ttft_p50_s"] / off[c]["ttft_p50_s"], 2)}
        for c in args.clients if on[c]["requests"] and off[c]["requests"]}
    every = [run for runs in rounds.values() for run in runs]
    report["dropped_requests"] = sum(r["errors"] for r in every)
    report["health_failures"] = sum(r["health_failures"] for r in every)
    report["health_max_s"] = max(r["health_max_s"] or 0 for r in every)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("greedy_outputs_equal", "distinct_answers_of_16", "ratios_on_vs_off",
                                             "dropped_requests", "health_failures", "health_max_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(Path(__file__).name, main))
