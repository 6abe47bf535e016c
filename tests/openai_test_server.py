"""The local OpenAI-compatible chat server (shared with the benchmarks)."""
from minigpt4.testing.openai_server import ChatServer, free_port  # noqa: F401
