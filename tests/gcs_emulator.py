"""Start/stop a local GCS emulator (gcp-storage-emulator) on loopback for tests.

Usage:
        with GcsEmulator(bucket="bucket") as emu:   # sets env vars, starts server
                ... use gs://bucket/... via epath / gcsfs / tensorstore / orbax ...

Two modes:
    mode="subprocess" (default): `python -c ...` child process, binds port 0 and
            prints the chosen port on stdout (no port race). Server has its own GIL,
            so it does not compete with the test's Python threads.
    mode="thread": in-process daemon thread (faster start, shares the GIL).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request


def patch_emulator() -> None:
    """Compat patches for gcp-storage-emulator 2026.7.19 (idempotent).

    1. objects.move (`POST /storage/v1/b/B/o/SRC/moveTo/o/DST`) is not
     implemented (501). gcsfs >= 2025.x tries it first for every file rename
     and retries 501 with backoff (~15-20 s per rename!) before falling back to
     rewrite+delete. We add it as copy+delete (atomic w.r.t. other requests,
     since the emulator serves one request at a time).
    2. Media downloads (`?alt=media`, `/download/...`) lack the
     `x-goog-generation` / `x-goog-metageneration` headers. tensorstore's gcs
     driver takes the object generation of a read from that header; without it
     the generation is 0 and the next conditional write (OCDBT manifest, used
     by orbax) fails with "Malformed StorageGeneration".
    3. Object listing ignores `startOffset`/`endOffset`. tensorstore's gcs
     driver lists a key range with exactly those (no `prefix`), so without
     this its list() returns every object in the bucket (with garbage keys)
     and delete_range() deletes objects OUTSIDE the range.
    4. `ifGenerationMatch` on uploads is ignored; enforce it (412) so
     tensorstore/OCDBT conditional writes behave like real GCS.
    5. Range downloads: suffix ranges `bytes=-N` (used by array_record's
     google-cloud-cpp GCS reader for the footer) are not understood and the
     whole object is returned with 200; ranges starting past EOF return a bogus
     206 instead of 416. Both fixed.
    6. Silence BrokenPipe/ConnectionReset tracebacks: gcsfs' _info() races two
     requests and cancels the loser.
    """
    import json
    import re
    import socketserver
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import Conflict, NotFound
    from gcp_storage_emulator.handlers import objects
    if getattr(server, "_drope_patched", False):
        return

    def move(request, response, storage):
        p = request.params
        try:
            dest = objects._copy(request.base_url, storage, p["bucket_name"],  # pylint: disable=protected-access
                           p["object_id"], p["bucket_name"], p["dest_object_id"])
            storage.delete_file(p["bucket_name"], p["object_id"])
            response.json(dest)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
        except Conflict as err:
            objects._handle_conflict(response, err)  # pylint: disable=protected-access

    move_route = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
                                r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {"POST": move})
    server.HANDLERS = (move_route,) + tuple(server.HANDLERS)

    orig_download = objects.download
    def download(request, response, storage, *args, **kwargs):
        rng = request.get_header("range", None)
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng or "")
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
        except NotFound:
            obj = None
        if obj is not None and m and not m.group(1) and m.group(2):
            # Suffix range `bytes=-N` (last N bytes; riegeli/array_record footer
            # prefetch). The emulator only parses `bytes=S-[E]` and would return the
            # WHOLE object with 200.
            data = storage.get_file(request.params["bucket_name"],
                                                            request.params["object_id"])
            n = min(int(m.group(2)), len(data))
            start = len(data) - n
            response.status = HTTPStatus.PARTIAL_CONTENT
            response["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            response.write_file(data[start:], content_type=obj.get("contentType"))
        elif (obj is not None and m and m.group(1)
                    and int(m.group(1)) >= int(obj["size"]) > 0):
            response.status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
            response["Content-Range"] = f"bytes */{obj['size']}"
            return
        else:
            orig_download(request, response, storage, *args, **kwargs)
        if obj is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
            response["x-goog-stored-content-length"] = str(obj["size"])

    orig_ls = objects.ls
    def ls(request, response, storage, *args, **kwargs):
        orig_ls(request, response, storage, *args, **kwargs)
        so = (request.query.get("startOffset") or [None])[0]
        eo = (request.query.get("endOffset") or [None])[0]
        if (so or eo) and response.status == HTTPStatus.OK:
            def keep(n):
                return (not so or n >= so) and (not eo or n < eo)
            body = json.loads(response._content)  # pylint: disable=protected-access
            body["items"] = [i for i in body.get("items") or [] if keep(i["name"])]
            body["prefixes"] = [p for p in body.get("prefixes") or [] if keep(p)]
            response.json(body)

    orig_insert = objects.insert
    def insert(request, response, storage, *args, **kwargs):
        want = (request.query.get("ifGenerationMatch") or [None])[0]
        name = (request.query.get("name") or [None])[0]
        if want is not None and name is not None:
            try:
                have = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                have = "0"
            if have != want:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return
        orig_insert(request, response, storage, *args, **kwargs)

    objects.download = download  # used by objects.get(alt=media)
    repl = {orig_download: download, orig_ls: ls, orig_insert: insert}
    server.HANDLERS = tuple(
            (rx, {m: repl.get(f, f) for m, f in h.items()}) for rx, h in server.HANDLERS)
    objects.insert = insert

    orig = socketserver.BaseServer.handle_error
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            orig(self, request, client_address)
    socketserver.BaseServer.handle_error = handle_error
    log_path = os.environ.get("GCS_EMULATOR_REQUEST_LOG")  # debugging aid
    if log_path:
        orig_handle = server.Router.handle
        def handle(self, method):
            h = self._request_handler
            with open(log_path, "a") as f:
                f.write(f"{method} {h.path} range={h.headers.get('Range')}\n")
            orig_handle(self, method)
        server.Router.handle = handle
    server._drope_patched = True


def _child_main(bucket: str) -> None:
    """Subprocess entry: bind 127.0.0.1:0, print port, serve until stdin EOF."""
    import logging
    logging.disable(logging.CRITICAL)  # emulator logs every request
    patch_emulator()
    from gcp_storage_emulator.server import create_server
    srv = create_server("127.0.0.1", 0, in_memory=True,
                                            default_bucket=bucket or None)
    srv.start()
    print(srv._api._httpd.server_address[1], flush=True)  # pylint: disable=protected-access
    sys.stdin.read()  # returns when the parent closes our stdin or dies
    srv.stop()


def emulator_env(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {
            # gcsfs (epath's gs:// backend when TF is absent) and google-cloud-storage
            "STORAGE_EMULATOR_HOST": url,
            # tensorstore `gcs` kvstore driver (orbax array data)
            "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
            # gcsfs: don't try the experimental zonal/HNS gRPC paths against the emulator
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # google.auth / gcsfs: never probe the GCE metadata server
            "NO_GCE_CHECK": "true",
            # etils: never pick the tf.io.gfile backend even if TF is installed
            "EPATH_USE_TF": "false",
    }


class GcsEmulator:

    def __init__(self, bucket: str = "bucket", mode: str = "subprocess"):
        self.bucket = bucket
        self.mode = mode
        self.port: int | None = None
        self._proc = None
        self._server = None
        self._old_env: dict[str, str | None] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GcsEmulator:
        if self.mode == "subprocess":
            self._proc = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--child", self.bucket],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError("GCS emulator failed to start")
            self.port = int(line)
        else:
            import logging
            logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
            logging.getLogger("api.object").setLevel(logging.CRITICAL)
            logging.getLogger("api.bucket").setLevel(logging.CRITICAL)
            patch_emulator()
            from gcp_storage_emulator.server import create_server
            self._server = create_server("127.0.0.1", 0, in_memory=True,
                                   default_bucket=self.bucket)
            self._server.start()
            self.port = self._server._api._httpd.server_address[1]
        # health check
        urllib.request.urlopen(self.url + "/", timeout=10).read()
        self._set_env()
        return self

    def create_bucket(self, name: str) -> None:
        """JSON API bucket insert (what gcsfs.mkdir('name') does)."""
        req = urllib.request.Request(
                self.url + "/storage/v1/b?project=test",
                data=json.dumps({"name": name}).encode(),
                headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def wipe(self, keep_buckets: bool = True) -> None:
        urllib.request.urlopen(
                self.url + "/wipe" + ("?keep-buckets=1" if keep_buckets else ""),
                timeout=10).read()

    def _set_env(self):
        for k, v in emulator_env(self.port).items():
            self._old_env[k] = os.environ.get(k)
            os.environ[k] = v
        # gcsfs token: fsspec reads FSSPEC_GCS_TOKEN only at fsspec import time,
        # so set the live config too (epath calls fsspec.filesystem('gcs', ...)).
        try:
            import fsspec.config
            fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
        except ImportError:
            pass
        _reset_gcsfs_caches()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        for k, v in self._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._old_env.clear()
        try:
            import fsspec.config
            fsspec.config.conf.get("gcs", {}).pop("token", None)
        except ImportError:
            pass
        _reset_gcsfs_caches()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _reset_gcsfs_caches():
    """Drop cached gcsfs instances (epath lru_caches its fsspec filesystem)."""
    if "etils.epath" in sys.modules:
        from etils.epath import backend
        backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    if "gcsfs" in sys.modules:  # don't import it here: GCSFS_* env is read at import
        import gcsfs
        gcsfs.core.GCSFileSystem.clear_instance_cache()
        gcsfs.GCSFileSystem.clear_instance_cache()

if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(sys.argv[2] if len(sys.argv) > 2 else "")
