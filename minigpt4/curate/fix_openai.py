"""The ``openai`` fixer: any OpenAI-compatible ``/v1/chat/completions`` endpoint, through the official client.

The API key is read from the environment variable named by ``curate.fix.openai.api_key_env`` and is
never written anywhere (not in rows, not in the summary, not in log lines). Requests run on a thread
pool of ``concurrency`` workers; each one is retried ``max_retries`` times on connection errors,
timeouts, 429 and 5xx answers, waiting ``backoff_initial`` seconds doubled after every failure (at most
``backoff_max``). A row that still fails is a :class:`FixResult` with ``error``; the run goes on. Answers
every row would get (401, 403, 404) stop the stage with a one-line error instead; rows fixed so far stay.
Token counts come from each answer's ``usage``; the cost is counted when per-token prices are set.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from minigpt4.curate.config import CurateError
from minigpt4.curate.fixers import Fixer, FixResult

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 429}
# answers that every row would get: the run stops with one line naming the key to check
_FATAL_STATUS = {401: "curate.fix.openai.api_key_env: the server refused the key (HTTP 401)",
                 403: "curate.fix.openai.api_key_env: the key may not use this model (HTTP 403)",
                 404: "curate.fix.openai.base_url / curate.fix.openai.model: no such endpoint or model (HTTP 404)"}


def _describe(exc) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection error ({type(cause).__name__ if cause else 'no answer'})"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return f"{type(exc).__name__}: {exc}"


def _retryable(exc) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in _RETRY_STATUS
    return False


class OpenAIFixer(Fixer):
    name = "openai"

    def __init__(self, cfg, prompt: str, *, check_endpoint: bool = True):
        try:
            import openai
        except ImportError:
            raise CurateError("curate.fix.fixer=openai needs the openai package: pip install 'minigpt4[curate]'") \
                from None
        if not cfg.base_url:
            raise CurateError("curate.fix.openai.base_url is not set (e.g. https://api.openai.com/v1, or your "
                              "server's http://host:port/v1)")
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise CurateError(f"curate.fix.openai.api_key_env: the environment variable {cfg.api_key_env} "
                                  "is not set; export it with your API key")
        else:
            key = "unused"  # a local server without authentication
        self.cfg, self.prompt = cfg, prompt
        self.client = openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=float(cfg.timeout), max_retries=0)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "retries": 0, "failed_rows": 0, "prompt_tokens": 0, "completion_tokens": 0}
        if check_endpoint:
            self.check_endpoint()

    def check_endpoint(self) -> None:
        """Fail at once, in one line, when nothing listens at ``base_url`` (any HTTP answer is fine)."""
        import openai

        try:
            self.client.models.list(timeout=min(float(self.cfg.timeout), 10.0))
        except openai.APITimeoutError:
            log.warning("curate.fix.openai.base_url %s: no answer to GET /models within the timeout; going on",
                        self.cfg.base_url)
        except openai.APIConnectionError as exc:
            raise CurateError(f"curate.fix.openai.base_url: cannot connect to {self.cfg.base_url} "
                              f"({_describe(exc)})") from None
        except openai.APIStatusError:
            pass  # the server answers; it may simply not list models

    def messages(self, text: str) -> list[dict]:
        if self.cfg.prompt_role == "system":
            return [{"role": "system", "content": self.prompt}, {"role": "user", "content": text}]
        return [{"role": "user", "content": f"{self.prompt}\n\n{text}"}]

    def _count(self, **deltas) -> None:
        with self.lock:
            for name, value in deltas.items():
                self.counts[name] += value

    def fix_one(self, key: str, text: str) -> FixResult:
        attempts = int(self.cfg.max_retries) + 1
        reason = "no attempt"
        for attempt in range(1, attempts + 1):
            self._count(requests=1)
            try:
                response = self.client.chat.completions.create(
                    model=self.cfg.model, messages=self.messages(text), temperature=float(self.cfg.temperature),
                    max_tokens=int(self.cfg.max_tokens))
            except Exception as exc:  # noqa: BLE001  (the client's errors; anything else is reported per row)
                status = getattr(exc, "status_code", None)
                if status in _FATAL_STATUS:
                    raise CurateError(f"{_FATAL_STATUS[status]} at {self.cfg.base_url}") from None
                reason = _describe(exc)
                if not _retryable(exc) or attempt == attempts:
                    break
                wait = min(float(self.cfg.backoff_initial) * 2 ** (attempt - 1), float(self.cfg.backoff_max))
                log.warning("fix %s: attempt %d of %d failed (%s); retrying in %.2f s", key, attempt, attempts,
                            reason, wait)
                self._count(retries=1)
                time.sleep(wait)
                continue
            usage = getattr(response, "usage", None)
            if usage is not None:
                self._count(prompt_tokens=int(usage.prompt_tokens or 0),
                            completion_tokens=int(usage.completion_tokens or 0))
            choices = response.choices or []
            reply = (choices[0].message.content or "").strip() if choices else ""
            if not reply:
                reason = "empty reply"
                break
            return FixResult(key, reply, reply)
        self._count(failed_rows=1)
        error = f"{reason} (after {attempt} attempt{'s' if attempt > 1 else ''})"
        log.warning("fix %s: giving up: %s", key, error)
        return FixResult(key, error=error)

    def fix(self, items):
        items = list(items)
        with ThreadPoolExecutor(max_workers=int(self.cfg.concurrency), thread_name_prefix="fix") as pool:
            futures = [pool.submit(self.fix_one, key, text) for key, text in items]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    def stats(self) -> dict:
        out = dict(self.counts)
        p_in, p_out = self.cfg.price_per_input_token, self.cfg.price_per_output_token
        if p_in is not None or p_out is not None:
            out["cost"] = round(out["prompt_tokens"] * float(p_in or 0) + out["completion_tokens"] * float(p_out or 0), 6)
        return out

    def close(self) -> None:
        self.client.close()
