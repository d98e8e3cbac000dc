"""A stub of the Anthropic API on 127.0.0.1 speaking the real wire format.

Endpoints: POST /v1/messages, GET /v1/models/{id} (capabilities: which thinking types the
model accepts), POST /v1/messages/batches, GET /v1/messages/batches (list, newest first, with
``limit``/``after_id`` paging), GET /v1/messages/batches/{id}, GET
/v1/messages/batches/{id}/results (JSONL). It fails the way the real API does on request:
queued faults per endpoint (429 with retry-after, 500, 529, a slow response, a malformed
body), an outage (every request answered with one fault until it is lifted), a batch create
that succeeds server-side but whose response is lost (500 or a timeout), replies cut at
``max_tokens`` (optionally with thinking tokens). It counts every request and reports
prompt-cache usage the way the API does: when a prefix ending at a ``cache_control``
breakpoint (of at least ``cache_min_tokens``) was seen before, its tokens come back as
``cache_read_input_tokens``, otherwise as ``cache_creation_input_tokens``. Tokens are
estimated as len(text) // 4.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXAMPLE_RE = re.compile(r'<example id="(\d+)">(.*?)</example>', re.DOTALL)


def ntokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class Fault:
    """One injected failure. kind: status | sleep | malformed | refusal | refusal_text |
    max_tokens (the reply is cut; ``seconds`` unused, ``status`` = thinking tokens spent) |
    lost (batch create only: the batch is made, then the response is a ``status`` error, or
    arrives after ``seconds`` when that is set, i.e. after the client timed out)."""

    kind: str
    status: int = 500
    error_type: str = "api_error"
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def user_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n\n".join(b.get("text", "") for b in content)


def default_responder(body: dict[str, Any]) -> str:
    """Explanations: a fixed line. Judging: 0.9 for examples mentioning 'apple', else 0.1."""
    text = body["messages"][-1]["content"][-1]["text"]
    if "What does this feature respond to?" in text:
        return "The marked tokens are fruit.\nExplanation: the word apple"
    examples = EXAMPLE_RE.findall(text)
    answers = [{"example": int(i), "probability": 0.9 if "apple" in t else 0.1} for i, t in examples]
    return json.dumps({"answers": answers})


class StubAnthropic:
    def __init__(self, responder: Callable[[dict[str, Any]], str] = default_responder,
                 cache_min_tokens: int = 1024, polls_before_end: int = 1) -> None:
        self.responder = responder
        self.cache_min_tokens = cache_min_tokens
        self.polls_before_end = polls_before_end
        self.counts: Counter[str] = Counter()
        self.message_bodies: list[dict[str, Any]] = []
        self.faults: dict[str, deque[Fault]] = {"messages": deque(), "batches": deque(), "batch_create": deque(),
                                                "models": deque()}
        #: while set, every request is answered with this fault (an outage)
        self.outage: Fault | None = None
        #: thinking types the model accepts (GET /v1/models/{id})
        self.thinking_types: dict[str, bool] = {"disabled": True, "between_tools": False, "adaptive": True,
                                                "enabled": False}
        #: every message a batch or the Messages API answered should cut at max_tokens
        self.truncate_all = False
        #: a fault for particular Messages API requests (by body), after the queued faults
        self.message_fault_for: Callable[[dict[str, Any]], Fault | None] = lambda body: None
        #: (request index in batch, custom_id) -> None | "errored" | "overloaded" | "expired"
        self.batch_item_fault: Callable[[int, str], str | None] = lambda i, cid: None
        self.batches: dict[str, dict[str, Any]] = {}
        self.seen_prefixes: set[str] = set()
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                stub._handle(self, "POST")

            def do_GET(self) -> None:
                stub._handle(self, "GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def total_requests(self) -> int:
        return sum(self.counts.values())

    # ------------------------------------------------------------------ wire helpers

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> None:
        try:
            h.send_response(status)
            h.send_header("content-type", ctype)
            h.send_header("content-length", str(len(payload)))
            h.send_header("request-id", f"req_{time.monotonic_ns()}")
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _error(self, h: BaseHTTPRequestHandler, fault: Fault) -> None:
        body = {"type": "error", "error": {"type": fault.error_type, "message": f"stub {fault.status}"}}
        self._send(h, fault.status, json.dumps(body).encode(), fault.headers)

    def _apply_fault(self, h: BaseHTTPRequestHandler, queue: str) -> Fault | None:
        """Handle a queued fault; returns the refusal-type faults for the caller to apply."""
        with self.lock:
            fault = self.faults[queue].popleft() if self.faults[queue] else None
        if fault is None:
            return None
        if fault.kind == "status":
            self._error(h, fault)
            return fault
        if fault.kind == "sleep":
            time.sleep(fault.seconds)
            return None
        if fault.kind == "malformed":
            self._send(h, 200, b'{"id": "msg_broken", "type": "message", "content": [{"ty')
            return fault
        return fault  # refusal kinds: handled by the message builder

    # ------------------------------------------------------------------ messages

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        blocks: list[tuple[str, bool]] = []
        system = body.get("system", [])
        if isinstance(system, str):
            blocks.append((system, False))
        else:
            blocks += [(b["text"], "cache_control" in b) for b in system]
        for m in body["messages"]:
            content = m["content"]
            if isinstance(content, str):
                blocks.append((content, False))
            else:
                blocks += [(b.get("text", ""), "cache_control" in b) for b in content]
        total = sum(ntokens(t) for t, _ in blocks)
        breakpoints = []  # (prefix hash, prefix tokens)
        running = hashlib.sha256(body["model"].encode())
        tokens = 0
        for text, marked in blocks:
            running.update(text.encode())
            tokens += ntokens(text)
            if marked and tokens >= self.cache_min_tokens:
                breakpoints.append((running.copy().hexdigest(), tokens))
        read = write = 0
        with self.lock:
            for digest, t in breakpoints:
                if digest in self.seen_prefixes:
                    read = t
            for digest, t in breakpoints:
                if t > read:
                    write = t - read
                self.seen_prefixes.add(digest)
        return {"input_tokens": total - read - write, "output_tokens": 0,
                "cache_read_input_tokens": read, "cache_creation_input_tokens": write}

    def message(self, body: dict[str, Any], fault: Fault | None = None) -> dict[str, Any]:
        usage = self._usage(body)
        stop = "end_turn"
        if self.truncate_all or (fault is not None and fault.kind == "max_tokens"):
            thinking = fault.status if fault is not None and fault.kind == "max_tokens" else 0
            text = self.responder(body)[: max(0, body["max_tokens"] - thinking)]  # cut well short
            usage["output_tokens"] = body["max_tokens"]
            usage["output_tokens_details"] = {"thinking_tokens": thinking}  # type: ignore[assignment]
            return {"id": f"msg_{time.monotonic_ns()}", "type": "message", "role": "assistant",
                    "model": body["model"], "content": [{"type": "text", "text": text[:20]}], "stop_reason": "max_tokens",
                    "stop_sequence": None, "usage": usage}
        if fault is not None and fault.kind == "refusal":
            content: list[dict[str, Any]] = []
            stop = "refusal"
        elif fault is not None and fault.kind == "refusal_text":
            content = [{"type": "text", "text": "I'm sorry, but I can't help with that request."}]
        else:
            content = [{"type": "text", "text": self.responder(body)}]
        usage["output_tokens"] = sum(ntokens(c["text"]) for c in content)
        return {"id": f"msg_{time.monotonic_ns()}", "type": "message", "role": "assistant",
                "model": body["model"], "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": usage}

    # ------------------------------------------------------------------ routing

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?")[0]
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        auth = h.headers.get("x-api-key") or h.headers.get("authorization") or ""
        with self.lock:
            self.auth_headers.append(auth)
            outage = self.outage
        if outage is not None:
            with self.lock:
                self.counts["outage"] += 1
            self._error(h, outage)
            return
        if method == "GET" and path.startswith("/v1/models/"):
            with self.lock:
                self.counts["models"] += 1
            fault = self._apply_fault(h, "models")
            if fault is not None and fault.kind in ("status", "malformed"):
                return
            self._send(h, 200, json.dumps(self._model_info(path.rsplit("/", 1)[1])).encode())
            return
        if method == "POST" and path == "/v1/messages":
            with self.lock:
                self.counts["messages"] += 1
            fault = self._apply_fault(h, "messages")
            if fault is not None and fault.kind in ("status", "malformed"):
                return
            body = json.loads(raw)
            if fault is None and (chosen := self.message_fault_for(body)) is not None:
                self._error(h, chosen)
                return
            with self.lock:
                self.message_bodies.append(body)
            self._send(h, 200, json.dumps(self.message(body, fault)).encode())
            return
        if path.startswith("/v1/messages/batches"):
            key = {("POST", 3): "batch_create", ("GET", 3): "batch_list", ("GET", 4): "batch_retrieve",
                   ("GET", 5): "batch_results"}
            kind = key.get((method, len(path.strip("/").split("/"))), "batch_other")
            with self.lock:
                self.counts[kind] += 1
            fault = self._apply_fault(h, "batches")
            if fault is not None and fault.kind in ("status", "malformed"):
                return
            getattr(self, f"_{kind}")(h, path, raw)
            return
        self._send(h, 404, json.dumps({"type": "error", "error": {"type": "not_found_error", "message": path}}).encode())

    def _batch_obj(self, bid: str, ended: bool) -> dict[str, Any]:
        b = self.batches[bid]
        n = len(b["requests"])
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.get("created", time.time())))
        counts = {"processing": 0 if ended else n, "succeeded": n if ended else 0, "errored": 0, "canceled": 0,
                  "expired": 0}
        return {"id": bid, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": created, "expires_at": now,
                "ended_at": now if ended else None,
                "results_url": f"{self.base_url}/v1/messages/batches/{bid}/results" if ended else None}

    def _model_info(self, model: str) -> dict[str, Any]:
        yes = {"supported": True}
        types = {k: {"supported": v} for k, v in self.thinking_types.items()}
        return {"id": model, "type": "model", "display_name": model, "created_at": "2026-06-01T00:00:00Z",
                "lifecycle": "active", "max_tokens": 128000, "max_input_tokens": 1000000,
                "capabilities": {"batch": yes, "structured_outputs": yes,
                                 "thinking": {"supported": True, "types": types}}}

    @property
    def created_batches(self) -> int:
        """Batches made server-side (each one billed), whatever their create response did."""
        return len(self.batches)

    def _batch_create(self, h: BaseHTTPRequestHandler, path: str, raw: bytes) -> None:
        body = json.loads(raw)
        with self.lock:
            fault = self.faults["batch_create"].popleft() if self.faults["batch_create"] else None
        if fault is not None and fault.kind != "lost":
            self._error(h, fault)
            return
        with self.lock:
            bid = f"msgbatch_{len(self.batches):04d}_{time.monotonic_ns()}"
            self.batches[bid] = {"requests": body["requests"], "polls": 0, "created": time.time()}
        if fault is not None:  # made, then the response is lost
            if fault.seconds:
                time.sleep(fault.seconds)
            else:
                self._error(h, fault)
                return
        self._send(h, 200, json.dumps(self._batch_obj(bid, False)).encode())

    def _batch_list(self, h: BaseHTTPRequestHandler, path: str, raw: bytes) -> None:
        from urllib.parse import parse_qs, urlparse

        q = parse_qs(urlparse(h.path).query)
        limit = int(q.get("limit", ["20"])[0])
        with self.lock:
            ids = sorted(self.batches, key=lambda b: (self.batches[b]["created"], b), reverse=True)
            if "after_id" in q and q["after_id"][0] in ids:
                ids = ids[ids.index(q["after_id"][0]) + 1 :]
            page = ids[:limit]
            data = [self._batch_obj(b, self.batches[b]["polls"] > self.polls_before_end) for b in page]
        body = {"data": data, "has_more": len(ids) > limit, "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None}
        self._send(h, 200, json.dumps(body).encode())

    def _batch_retrieve(self, h: BaseHTTPRequestHandler, path: str, raw: bytes) -> None:
        bid = path.strip("/").split("/")[3]
        with self.lock:
            self.batches[bid]["polls"] += 1
            ended = self.batches[bid]["polls"] > self.polls_before_end
        self._send(h, 200, json.dumps(self._batch_obj(bid, ended)).encode())

    def _batch_results(self, h: BaseHTTPRequestHandler, path: str, raw: bytes) -> None:
        bid = path.strip("/").split("/")[3]
        lines = []
        for i, req in enumerate(self.batches[bid]["requests"]):
            fault = self.batch_item_fault(i, req["custom_id"])
            if fault == "errored":
                result: dict[str, Any] = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "stub: bad request"}}}
            elif fault == "overloaded":
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "overloaded_error", "message": "stub: overloaded"}}}
            elif fault == "expired":
                result = {"type": "expired"}
            else:
                result = {"type": "succeeded", "message": self.message(req["params"])}
            lines.append(json.dumps({"custom_id": req["custom_id"], "result": result}))
        lines.reverse()  # results are not guaranteed to be in request order
        self._send(h, 200, ("\n".join(lines) + "\n").encode(), ctype="application/binary")
