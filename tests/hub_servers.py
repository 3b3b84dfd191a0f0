"""Stand-ins for the Hugging Face Hub, on loopback, for tests that must not reach the internet.

- `MiniHub`: a small in-process HTTP server speaking the Hub endpoints that the official client
  (`huggingface_hub.HfApi`) calls to create a repo, commit to it and read it back. Commits live
  in memory, so a test can assert exactly what arrived. It can be told to fail commits (HTTP 500)
  to test that an interrupted push leaves nothing behind.
- `OlahServer`: olah (a self-hosted Hub mirror, PyPI `olah`) in offline mode, serving local git
  repos as Hub model repos: the read path as a real mirror serves it.

The endpoint shapes were taken from what huggingface_hub 2.x sends and parses, not patched into
the client. Requests the MiniHub does not know are answered 404 and recorded in `unhandled`, so
a test that hits a missing endpoint says which.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid / ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]  # the whole tree after this commit
    added: dict[str, bytes] = field(default_factory=dict)  # what this commit wrote
    deleted: list[str] = field(default_factory=list)
    date: str = ""


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit oid

    def head(self, revision: str = "main") -> Commit | None:
        if revision in self.commits:
            return self.commits[revision]
        oid = self.refs.get(revision) or self.refs.get(revision.removeprefix("refs/heads/"))
        return self.commits.get(oid) if oid else None

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        out, commit = [], self.head(revision)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class MiniHub:
    """An in-memory Hub on 127.0.0.1 (write and read endpoints); use as a context manager.

    `fail_commits = n` makes the next n commit requests fail with HTTP 500 after reading the whole
    payload, storing nothing: the Hub's all-or-nothing commit, interrupted.
    """

    def __init__(self, user: str = "user"):
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.failed_commits: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.fail_commits = 0
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "MiniHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "MiniHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="minihub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "MiniHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state helpers for tests
    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].head(revision)
        return dict(commit.files) if commit else {}

    def add_repo(
        self, repo_id: str, files: Mapping[str, bytes], *, private: bool = False, message: str = "seed"
    ) -> str:
        """Create a repo holding `files` directly (no client involved); returns the commit oid."""
        with self._lock:
            repo = self._create(repo_id, private)
            return self._commit(repo, "main", dict(files), [], message, "").oid

    # -- internals (called with the lock held)
    def _now(self) -> str:
        return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _create(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        self.repos[repo_id] = repo
        self._commit(repo, "main", {".gitattributes": GITATTRIBUTES}, [], "initial commit", "")
        return repo

    def _commit(
        self,
        repo: Repo,
        ref: str,
        added: dict[str, bytes],
        deleted: list[str],
        summary: str,
        description: str,
        parent: Commit | None = None,
    ) -> Commit:
        parent = parent if parent is not None else repo.head(ref)
        files = dict(parent.files) if parent else {}
        for path in deleted:
            prefix = path.rstrip("/") + "/"
            for existing in [p for p in files if p == path or p.startswith(prefix)]:
                del files[existing]
        files.update(added)
        seed = json.dumps(
            [
                parent.oid if parent else None,
                summary,
                next(self._counter),
                sorted((p, git_blob_oid(c)) for p, c in files.items()),
            ]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(
            oid=oid,
            parent=parent.oid if parent else None,
            summary=summary,
            description=description,
            files=files,
            added=dict(added),
            deleted=list(deleted),
            date=self._now(),
        )
        repo.commits[oid] = commit
        repo.refs[ref] = oid
        return commit

    def _get_repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.head(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit


def _card_data(readme: bytes | None) -> dict | None:
    if not readme:
        return None
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    """Routes of the Hub API used by huggingface_hub (model repos only)."""

    hub: MiniHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # -- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message}, headers)

    def _dispatch(self) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        raw_parts = [p for p in url.path.split("/") if p != ""]
        parts = [unquote(p) for p in raw_parts]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with hub._lock:
            hub.requests.append((self.command, self.path))
            hub.authorizations.append(self.headers.get("Authorization"))
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            handled = self._route(self.command, parts, query, body)
        except HubError as err:
            self._error(err)
            return
        if not handled:
            with hub._lock:
                hub.unhandled.append((self.command, self.path))
            self._error(HubError(404, f"MiniHub does not implement {self.command} {url.path}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routes
    def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes) -> bool:
        hub = self.hub
        if parts[:2] == ["api", "whoami-v2"] and method == "GET":
            self._json(200, {"type": "user", "name": hub.user, "auth": {"type": "access_token"}})
            return True
        if parts == ["api", "agent-harnesses"] and method == "GET":  # the client's user-agent registry
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return True
        if parts == ["api", "repos", "create"] and method == "POST":
            self._create_repo(json.loads(body or b"{}"))
            return True
        if parts == ["api", "validate-yaml"] and method == "POST":
            self._validate_yaml(json.loads(body or b"{}"))
            return True
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            return self._repo_api(method, repo_id, rest, query, body)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            return True
        return False

    def _create_repo(self, payload: dict) -> None:
        hub = self.hub
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "MiniHub serves model repos only")
        name, org = payload.get("name"), payload.get("organization") or hub.user
        if not name or "/" in name:
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{org}/{name}"
        url = f"{hub.endpoint}/{repo_id}"
        with hub._lock:
            if repo_id in hub.repos:  # the Hub's 409 carries the url: create_repo(exist_ok=True) reads it
                message = "You already created this model repo"
                self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
                return
            hub._create(repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content") or ""
        if content.startswith("---"):
            end = content.find("\n---", 3)
            try:
                if end < 0:
                    raise yaml.YAMLError("metadata block is not closed")
                data = yaml.safe_load(content[3:end])
                if data is not None and not isinstance(data, dict):
                    raise yaml.YAMLError("metadata must be a mapping")
            except yaml.YAMLError as err:
                self._json(400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []})
                return
        self._json(200, {"errors": [], "warnings": []})

    def _repo_api(
        self, method: str, repo_id: str, rest: list[str], query: dict[str, str], body: bytes
    ) -> bool:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_id)
            if method == "GET" and (not rest or rest[0] == "revision"):
                revision = rest[1] if len(rest) > 1 else "main"
                self._json(200, self._model_info(repo, hub._get_commit(repo, revision)))
                return True
            if method == "GET" and rest and rest[0] == "tree" and len(rest) >= 2:
                commit = hub._get_commit(repo, rest[1])
                self._json(
                    200,
                    self._tree(commit, "/".join(rest[2:]), query.get("recursive") in ("1", "true", "True")),
                )
                return True
            if method == "GET" and rest == ["refs"]:
                branches = [
                    {"name": r, "ref": f"refs/heads/{r}", "targetCommit": o}
                    for r, o in repo.refs.items()
                    if not r.startswith("refs/")
                ]
                prs = [
                    {"name": r, "ref": r, "targetCommit": o}
                    for r, o in repo.refs.items()
                    if r.startswith("refs/pr/")
                ]
                self._json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": prs})
                return True
            if method == "POST" and rest and rest[0] == "paths-info" and len(rest) == 2:
                commit = hub._get_commit(repo, rest[1])
                try:
                    paths = json.loads(body).get("paths", [])
                except (json.JSONDecodeError, AttributeError):
                    paths = parse_qs(body.decode()).get("paths", [])
                entries = [e for e in self._tree(commit, "", True, dirs=True) if e["path"] in set(paths)]
                self._json(200, entries)
                return True
            if method == "POST" and rest and rest[0] == "preupload" and len(rest) == 2:
                commit = hub._get_commit(repo, rest[1])
                files = json.loads(body).get("files", [])
                answer = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_oid(commit.files[f["path"]]) if f["path"] in commit.files else None,
                    }
                    for f in files
                ]
                self._json(200, {"files": answer, "commitOid": commit.oid})
                return True
            if method == "POST" and rest and rest[0] == "branch" and len(rest) == 2:
                branch = rest[1]
                if branch in repo.refs:
                    raise HubError(409, f"Reference already exists: {branch}")
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.refs[branch] = hub._get_commit(repo, start).oid
                self._json(200, {})
                return True
            if method == "POST" and rest and rest[0] == "commit" and len(rest) == 2:
                self._commit(repo, rest[1], query, body)
                return True
        return False

    def _commit(self, repo: Repo, revision: str, query: dict[str, str], body: bytes) -> None:
        hub = self.hub
        if "ndjson" not in (self.headers.get("Content-Type") or ""):
            raise HubError(400, "commit payload must be application/x-ndjson")
        header, added, deleted = None, {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            path = value.get("path", "")
            if key != "header" and (not path or path.startswith("/") or ".." in path.split("/")):
                raise HubError(400, f"invalid path in commit: {path!r}")
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                added[path] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(path)
            elif key == "lfsFile":
                raise HubError(400, "MiniHub answers preupload with uploadMode=regular; got an LFS file")
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        if header is None or not header.get("summary"):
            raise HubError(400, "commit header with a summary is required")
        if hub.fail_commits > 0:
            hub.fail_commits -= 1
            hub.failed_commits.append(
                {"repo_id": repo.repo_id, "summary": header["summary"], "paths": sorted(added)}
            )
            raise HubError(500, "Internal Error - simulated failure, nothing was committed")
        create_pr = query.get("create_pr") in ("1", "true", "True")
        base = hub._get_commit(repo, revision)
        if header.get("parentCommit") and not base.oid.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        pr_url = None
        ref = revision
        if create_pr:
            number = 1 + sum(1 for r in repo.refs if r.startswith("refs/pr/"))
            ref = f"refs/pr/{number}"
            pr_url = f"{hub.endpoint}/{repo.repo_id}/discussions/{number}"
        elif revision not in repo.refs:
            raise HubError(404, f"Invalid rev id: {revision}: commit to a branch", "RevisionNotFound")
        commit = hub._commit(
            repo, ref, added, deleted, header["summary"], header.get("description", ""), parent=base
        )
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{hub.endpoint}/{repo.repo_id}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            },
        )

    def _model_info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        card = _card_data(commit.files.get("README.md")) or {}
        org = repo.repo_id.split("/")[0]
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": org,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.history(commit.oid)[-1].date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": card.get("library_name"),
            "pipeline_tag": card.get("pipeline_tag"),
            "tags": list(card.get("tags") or []),
            "cardData": card or None,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    @staticmethod
    def _tree(commit: Commit, path: str, recursive: bool, dirs: bool = True) -> list[dict[str, Any]]:
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and path in commit.files:
            raise HubError(404, f"{path} is a file, not a folder", "EntryNotFound")
        below = {p: c for p, c in commit.files.items() if p.startswith(prefix)}
        if path and not below:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        entries, seen_dirs = [], set()
        for file_path, content in sorted(below.items()):
            rel_parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(rel_parts)):
                folder = prefix + "/".join(rel_parts[:depth])
                if folder not in seen_dirs and (recursive or depth == 1):
                    seen_dirs.add(folder)
                    if dirs:
                        entries.append(
                            {
                                "type": "directory",
                                "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                "size": 0,
                                "path": folder,
                            }
                        )
            if recursive or len(rel_parts) == 1:
                entries.append(
                    {"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": file_path}
                )
        return entries

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_id)
            commit = hub._get_commit(repo, revision)
            content = commit.files.get(path)
        if content is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "ETag": f'"{git_blob_oid(content)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        status, body = 200, content
        byte_range = self.headers.get("Range")
        if byte_range and byte_range.startswith("bytes=") and self.command == "GET":
            start_text, _, end_text = byte_range[6:].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(content) - 1
            body = content[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(content)}"
        self._send(status, body, headers, content_type="application/octet-stream")


# --------------------------------------------------------------------------------------- olah
class OlahServer:
    """olah in offline mode on 127.0.0.1, serving the git repos under `<root>/mirrors`.

    Started as a subprocess (`python -m olah.server -c <toml>`) with this config:

        [basic]
        host = "127.0.0.1"; port = <free port>
        repos-path = "<root>/cache"; mirrors-path = ["<root>/mirrors"]
        hf-netloc = "127.0.0.1:9"  # never the real Hub, even by mistake
        metadata-cache-ttl = 0
        [accessibility]
        offline = true

    A repo `user/name` is the git repo `<root>/mirrors/models/user/name` (`add_repo` makes one).
    olah reads it on every request, so repos can be added while it runs.
    """

    # olah 0.5.4 sniffs every 121-149 byte blob for a git-lfs pointer by decoding it as UTF-8: a
    # binary file of that size makes tree listings, HEAD and GET answer HTTP 500.
    LFS_SNIFF_SIZES = range(121, 150)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.root / "olah-stdout.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "OlahServer":
        self.mirrors.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.port = free_port()
            config = self.root / "olah.toml"
            config.write_text(
                "[basic]\n"
                'host = "127.0.0.1"\n'
                f"port = {self.port}\n"
                f'repos-path = "{self.root / "cache"}"\n'
                f'mirrors-path = ["{self.mirrors}"]\n'
                'hf-netloc = "127.0.0.1:9"\n'
                'hf-lfs-netloc = "127.0.0.1:9"\n'
                "metadata-cache-ttl = 0\n"
                "[accessibility]\n"
                "offline = true\n",
                encoding="utf-8",
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "olah.server",
                        "-c",
                        str(config),
                        "--log-path",
                        str(self.root / "logs"),
                    ],
                    cwd=self.root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(
            f"olah did not start; its output:\n{self.log_path.read_text(errors='replace')[-3000:]}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answered: it is up
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> "OlahServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_repo(
        self, repo_id: str, source: str | os.PathLike | Mapping[str, bytes], message: str = "upload"
    ) -> str:
        """Commit `source` (a folder, or {path: bytes}) as the repo `repo_id`; returns the commit sha."""
        org, name = repo_id.split("/")
        target = self.mirrors / "models" / org / name
        fresh = not (target / ".git").exists()
        target.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Mapping):
            items = [(path, data) for path, data in source.items()]
        else:
            source = Path(source)
            items = [
                (p.relative_to(source).as_posix(), p.read_bytes())
                for p in sorted(source.rglob("*"))
                if p.is_file()
            ]
        for path, data in items:
            if len(data) in self.LFS_SNIFF_SIZES and not _is_utf8(data):
                raise ValueError(
                    f"{path}: a {len(data)}-byte binary file; olah 0.5.4 answers HTTP 500 for binary "
                    "blobs of 121-149 bytes (it decodes them as UTF-8 looking for an LFS pointer)"
                )
            dest = target / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        git = [
            "git",
            "-C",
            str(target),
            "-c",
            "user.name=hf_conpet tests",
            "-c",
            "user.email=tests@localhost",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ]
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        if fresh:
            subprocess.run(git + ["init", "-q"], check=True, env=env)
        subprocess.run(git + ["add", "-A"], check=True, env=env)
        subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", message], check=True, env=env)
        sha = subprocess.run(git + ["rev-parse", "HEAD"], check=True, env=env, capture_output=True, text=True)
        return sha.stdout.strip()

    def remove_repo(self, repo_id: str) -> None:
        shutil.rmtree(self.mirrors / "models" / repo_id, ignore_errors=True)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
