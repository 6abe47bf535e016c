"""An OpenAI-compatible HTTP server for MiniGPT-4 models, with dynamic batching and streaming.

    python -m minigpt4.serve --cfg-path eval_configs/minigpt4_eval.yaml --port 8000

Modules: :mod:`~minigpt4.serve.schema` (the request fields), :mod:`~minigpt4.serve.images` (image URLs),
:mod:`~minigpt4.serve.prompts` (messages -> the conversation template), :mod:`~minigpt4.serve.app` (the
FastAPI app), :mod:`~minigpt4.serve.cli` (the command). Generation runs in :mod:`minigpt4.generation`.
"""
