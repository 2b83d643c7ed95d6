"""One POST to an OpenAI-compatible ``/completions`` endpoint (vLLM, TGI, llama.cpp, OpenAI), with retries.

Shared by the TruthfulQA judge and the remote generator so that both treat failures alike: connection errors,
timeouts, 429 and 5xx are retried with exponential backoff; other HTTP errors (a prompt over the server's
context is a 400) are final and raised as :class:`EndpointError` with the server's message.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from .errors import ItiError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: Statuses that are about the one request (a prompt over the context: vLLM 400, TGI 422, a proxy's 413), not the
#: server: a caller may record them as that prompt's outcome. Anything else final (404 wrong model name, 401/403)
#: is about every request and must stop the caller.
PROMPT_STATUS = {400, 413, 422}


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EndpointError(ItiError, RuntimeError):
    """A request the endpoint refused, or that kept failing after every retry."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable

    @property
    def prompt_specific(self) -> bool:
        """True when the failure is the request's own (an over-long prompt), false when every request would fail."""
        return self.status in PROMPT_STATUS


def post_completion(url: str, body: dict[str, Any], *, api_key: str | None = None, timeout: float = 60.0,
                    retries: int = 3, backoff: float = 1.0) -> dict[str, Any]:
    """POST ``body`` to ``{url}/completions`` and return the decoded JSON answer."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    endpoint = f"{url.rstrip('/')}/completions"
    last = ""
    for attempt in range(max(1, retries)):
        try:
            req = urllib.request.Request(endpoint, data=data, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                answer = json.loads(resp.read())
            _check_answer(endpoint, answer)
            return answer
        except urllib.error.HTTPError as e:
            detail = _one_line(e.read().decode("utf-8", "replace"))
            if e.code not in RETRY_STATUS:
                raise EndpointError(f"{endpoint} answered HTTP {e.code}: {detail}", status=e.code) from None
            last = f"HTTP {e.code}: {detail}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
            last = f"{type(e).__name__}: {e}"
        if attempt + 1 < retries:
            time.sleep(backoff * 2**attempt)
    raise EndpointError(f"{endpoint} failed after {retries} tries: {_one_line(last)}", retryable=True)


def _check_answer(endpoint: str, answer: Any) -> None:
    """Refuse an HTTP 200 that is not a completion (vLLM can answer ``{"object": "error", ...}`` with 200): that is
    the server's failure, not an answer to cache."""
    if isinstance(answer, dict) and answer.get("object") == "error":
        raise EndpointError(f"{endpoint} answered HTTP 200 with an error: {_one_line(str(answer.get('message', answer)))}",
                            status=200)  # never prompt_specific: an error body is the server's, whatever its code
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EndpointError(f"{endpoint} answered HTTP 200 without completions: {_one_line(json.dumps(answer))}")


def list_models(url: str, *, api_key: str | None = None, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """``GET {url}/models``: the served models by name (vLLM gives each a ``root``, the path it loaded); raises
    :class:`EndpointError` when the server does not answer with such a list."""
    endpoint = f"{url.rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, headers=headers), timeout=timeout) as resp:
            data = json.loads(resp.read())
        return {str(m["id"]): dict(m) for m in data["data"]}
    except urllib.error.HTTPError as e:
        raise EndpointError(f"{endpoint} answered HTTP {e.code}", status=e.code) from None
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as e:
        raise EndpointError(f"{endpoint}: {type(e).__name__}: {e}") from None
