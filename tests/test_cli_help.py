"""Every entry point answers --help without importing torch, transformers or gradio, and explains itself."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import runpy, sys
sys.argv = [{name!r}, "--help"]
try:
    {run}
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "transformers", "gradio") if m in sys.modules)
print("HEAVY:", ",".join(heavy) or "none", "EXIT:", code, file=sys.stderr)
"""
ENTRY_POINTS = {
    "train.py": ("runpy.run_path('train.py', run_name='__main__')",
                 ["torchrun --nproc-per-node", "--tiny-world DIR", "--resume auto|PATH", "exit status"]),
    "demo.py": ("runpy.run_path('demo.py', run_name='__main__')",
                ["--port PORT", "(default: 7860)", "(default: 300)", "--template", "(default: auto",
                 "(default: 127.0.0.1", "--tiny-world DIR"]),
    "minigpt4.chat": ("runpy.run_module('minigpt4.chat', run_name='__main__')",
                      ["/image PATH", "/reset", "/quit", "Ctrl-C stops it", "(default: 0.9)", "--tiny-world DIR"]),
    "minigpt4.tiny_world": ("runpy.run_module('minigpt4.tiny_world', run_name='__main__')",
                            ["What it builds", "How long", "Where results go", "--preset {full,test}"]),
    "minigpt4.caption": ("runpy.run_module('minigpt4.caption', run_name='__main__')",
                         ["--labels", "--list", "{label}", "--tiny-world DIR"]),
    "minigpt4.serve": ("runpy.run_module('minigpt4.serve', run_name='__main__')", ["--max-batch-size", "--port"]),
    "minigpt4.curate": ("runpy.run_module('minigpt4.curate', run_name='__main__')", ["--stages", "--fixer"]),
    "minigpt4.features": ("runpy.run_module('minigpt4.features', run_name='__main__')",
                          ["extract", "--nproc-per-node", "feature_store", "deterministic"]),
    "minigpt4.gpt4image.embed": ("runpy.run_module('minigpt4.gpt4image.embed', run_name='__main__')",
                                 ["--descriptions", "--encoder"]),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_is_light_and_complete(name):
    run, wanted = ENTRY_POINTS[name]
    proc = subprocess.run([sys.executable, "-c", PROBE.format(name=name, run=run)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "HEAVY: none EXIT: 0" in proc.stderr, proc.stderr[-2000:]
    for text in wanted:
        assert text in proc.stdout, f"{name} --help lacks {text!r}:\n{proc.stdout}"
