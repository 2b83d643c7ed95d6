"""One POST to an OpenAI-compatible ``/completions`` endpoint (vLLM, TGI, llama.cpp, OpenAI), with retries.

Shared by the TruthfulQA judge and the remote generator so that both treat failures alike: connection errors,
timeouts, 429 and 5xx are retried with exponential backoff within a bounded number of tries and seconds (a
connection is opened within a short connect timeout, a hung server is tried twice at most); other HTTP errors (a
prompt over the server's context is a 400) are final and raised as :class:`EndpointError` with the server's
message, and so is an HTTP 200 whose body is an error rather than completions.
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, cast

from .errors import EndpointError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: Statuses that are about the one request (a prompt over the context: vLLM 400, TGI 422, a proxy's 413), not the
#: server: a caller may record them as that prompt's outcome. Anything else final (404 wrong model name, 401/403)
#: is about every request and must stop the caller.
PROMPT_STATUS = EndpointError.prompt_statuses


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."




def post_completion(url: str, body: dict[str, Any], *, api_key: str | None = None, timeout: float = 60.0,
                    retries: int = 3, backoff: float = 1.0, connect_timeout: float = 10.0,
                    budget: float | None = None) -> dict[str, Any]:
    """POST ``body`` to ``{url}/completions`` and return the decoded JSON answer.

    ``connect_timeout`` bounds opening the connection (a dead host fails in seconds), ``timeout`` the wait for
    each read of the answer. Connection errors, 429 and 5xx are retried with exponential backoff, up to
    ``retries`` tries and within ``budget`` seconds in all (default ``2 * timeout + 30``); a server that accepted
    the request and did not answer within ``timeout`` is tried once more at most, since it is most likely hung."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    endpoint = f"{url.rstrip('/')}/completions"
    start = time.monotonic()
    deadline = start + (2 * timeout + 30 if budget is None else budget)
    last, tries, timeouts = "", 0, 0
    for attempt in range(max(1, retries)):
        tries += 1
        try:
            status, raw = _post_once(endpoint, data, headers, min(connect_timeout, timeout),
                                     max(0.01, min(timeout, deadline - time.monotonic())))
            if status >= 400:
                detail = _one_line(raw.decode("utf-8", "replace"))
                if status not in RETRY_STATUS:
                    raise EndpointError(f"{endpoint} answered HTTP {status}: {detail}", status=status)
                last = f"HTTP {status}: {detail}"
            else:
                answer = json.loads(raw)
                _check_answer(endpoint, answer)
                return answer
        except TimeoutError as e:
            timeouts += 1
            last = f"no answer within {timeout:g} s ({type(e).__name__})"
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
            last = f"{type(e).__name__}: {e}"
        pause = backoff * 2**attempt
        if attempt + 1 >= retries or timeouts >= 2 or time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
    raise EndpointError(f"{endpoint} failed after {tries} tries in {time.monotonic() - start:.0f} s: {_one_line(last)}",
                        retryable=True)


def _post_once(endpoint: str, data: bytes, headers: dict[str, str], connect_timeout: float,
               read_timeout: float) -> tuple[int, bytes]:
    """One POST: connect within ``connect_timeout``, then wait up to ``read_timeout`` for each read."""
    u = urllib.parse.urlsplit(endpoint)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(cast(str, u.hostname), u.port, timeout=connect_timeout)
    try:
        conn.connect()
        conn.sock.settimeout(read_timeout)
        conn.request("POST", u.path + (f"?{u.query}" if u.query else ""), body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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


#: iti's vLLM plugin (``plugins/vllm``) reads a request's steering from these ``vllm_xargs`` keys
PLUGIN_NAME_ARG, PLUGIN_STRENGTH_ARG, PLUGIN_POSITIONS_ARG = "iti", "iti_strength", "iti_positions"


def plugin_steering_args(name: str, strength: float, positions: str = "last") -> dict[str, Any]:
    """The ``vllm_xargs`` asking iti's vLLM plugin for the saved value ``name`` at ``strength`` (an intervention's
    alpha; a steering value's multiplier) and ``positions`` (``last``: ITI's rule, the last prompt token and every
    generated one; ``all``: every token, as a baked checkpoint)."""
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    return {PLUGIN_NAME_ARG: name, PLUGIN_STRENGTH_ARG: float(strength), PLUGIN_POSITIONS_ARG: positions}
