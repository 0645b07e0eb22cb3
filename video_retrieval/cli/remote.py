"""``vr search --server URL`` (or ``VR_SERVER``): the query goes to a running ``vr serve``, which
holds the models, and the answer is printed as a local search prints it. Nothing here imports
torch, so the command costs the interpreter's start-up and one HTTP request.

The token of a server started with ``--token`` is read from ``VR_SERVE_TOKEN`` (never from the
command line, where other users could see it in the process list)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from video_retrieval.errors import UserError

#: the server's own batch limit (web.config.MAX_BATCH): a queries file goes in slices of it
BATCH = 32
#: fields only the HTTP answers have (their URLs point into the server)
HTTP_ONLY = ("thumbnail", "media")


def server_url(args) -> str | None:
    url = getattr(args, "server", None) or os.environ.get("VR_SERVER") or None
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(
            f"--server must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}"
        )
    return url.rstrip("/")


def call(url: str, path: str, *, params: dict | None = None, body: dict | None = None,
         timeout: float = 120.0):  # fmt: skip
    """One request to the server; its JSON answer, or a ``UserError`` with one line."""
    full = f"{url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    headers = {"Accept": "application/json"}
    token = os.environ.get("VR_SERVE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(full, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            why = exc.reason
        hint = " (set VR_SERVE_TOKEN to the server's token)" if exc.code == 401 else ""
        raise UserError(f"{url} answered {exc.code}: {why}{hint}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach vr serve at {url}: {reason} (is it running? start it with "
            "vr serve --index DIR)"
        ) from None
    except ValueError:
        raise UserError(f"{url}{path} did not answer JSON: is it a vr serve?") from None


def local_shape(answer: dict) -> dict:
    """The server's answer as ``vr search --json`` prints it: without the time taken and the
    hits' URLs."""
    from video_retrieval.schemas import SearchResult

    order = (*SearchResult.model_fields, "weights")  # the order of results_json
    out = {k: answer[k] for k in order if k in answer}
    out |= {k: v for k, v in answer.items() if k not in out and k != "took_ms"}
    out["results"] = [{k: v for k, v in h.items() if k not in HTTP_ONLY} for h in answer["results"]]
    return out


def search(args, url: str, print_answer) -> int:
    """``vr search`` through the server: the same output as a local search."""
    from video_retrieval.datasets.text_files import read_query_file
    from video_retrieval.limits import check_query

    if args.index:
        raise UserError("--server searches the server's index: leave out --index")
    if args.rerank_model is not None:
        raise UserError("--rerank-model is the server's choice: start vr serve with it")
    rerank = None if args.rerank == "auto" else args.rerank
    if args.queries:
        lines = read_query_file(args.queries)
    else:
        lines = [(None, check_query(args.query))]
    answers = []
    for i in range(0, len(lines), BATCH):
        texts = [q for _, q in lines[i : i + BATCH]]
        if args.queries:
            body = {"queries": texts, "k": args.k} | ({"rerank": rerank} if rerank else {})
            answers += call(url, "/api/search", body=body)["searches"]
        else:
            params = {"q": texts[0], "k": args.k} | ({"rerank": rerank} if rerank else {})
            answers.append(call(url, "/api/search", params=params))
    for (line, _), answer in zip(lines, answers):
        print_answer(local_shape(answer), args, line)
    return 0
