"""Hostile reward servers and tokens against the client (orchestrator.rewards.remote.remote_scores)."""
import http.server, json, socketserver, sys, threading, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # the checkout
from orchestrator.rewards.remote import remote_scores, check_remote_config
from orchestrator.errors import TetherError

seen = {}

class Thief(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        seen["auth"] = self.headers.get("Authorization")
        body = json.dumps({"rewards": [0.5]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    do_POST = do_GET

def serve(handler):
    s = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler); s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s

thief = serve(Thief)
class Redirect(http.server.BaseHTTPRequestHandler):
    code = 302
    def log_message(self, *a): pass
    def do_POST(self):
        self.send_response(self.code); self.send_header("Location", f"http://localhost:{thief.server_address[1]}/steal")
        self.send_header("Content-Length", "0"); self.end_headers()

class Trickle(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"rewards": [0.5]}' + b" " * 30
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        for b in body:
            self.wfile.write(bytes([b])); self.wfile.flush(); time.sleep(0.15)

class Huge(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        n = 300 << 20
        self.send_response(200); self.send_header("Content-Length", str(n + 20)); self.end_headers()
        try:
            self.wfile.write(b'{"rewards": [0.5], "x": "'); chunk = b"a" * (1 << 20)
            for _ in range(300): self.wfile.write(chunk)
            self.wfile.write(b'"}')
        except OSError: pass

def attempt(name, url, token="s3cret-token", timeout=1.0):
    t = time.monotonic()
    try:
        out = remote_scores(url, token, ["p"], ["r"], timeout)
        res = f"returned {out}"
    except TetherError as e:
        res = f"{type(e).__name__}: {e}"
    except Exception as e:
        res = f"TRACEBACK-type {type(e).__name__}: {e}"
    print(f"[{name}] {time.monotonic()-t:.1f}s {res[:300]}")

which = sys.argv[1:] or ["redirect", "newline", "userinfo", "trickle", "huge"]
if "redirect" in which:
    r = serve(Redirect)
    seen.clear(); attempt("redirect 302", f"http://127.0.0.1:{r.server_address[1]}/score")
    print("  token seen by the other host:", seen.get("auth"))
if "newline" in which:
    attempt("token with newline", f"http://127.0.0.1:{thief.server_address[1]}/score", token="s3cret\nX-Evil: 1")
    try:
        check_remote_config("http://127.0.0.1:1/score", "s3cret\nX-Evil: 1", "TETHER_REWARD_TOKEN"); print("  check_remote_config: accepted")
    except TetherError as e: print("  check_remote_config:", e)
if "userinfo" in which:
    try:
        check_remote_config("http://alice:hunter2@127.0.0.1:1/score", "tok", "TETHER_REWARD_TOKEN"); print("[userinfo] check_remote_config: accepted")
    except TetherError as e: print("[userinfo] check_remote_config:", e)
    attempt("userinfo url", "http://alice:hunter2@127.0.0.1:1/score")
if "trickle" in which:
    tr = serve(Trickle); attempt("trickle reply, remote_timeout_s=1", f"http://127.0.0.1:{tr.server_address[1]}/score")
if "huge" in which:
    import resource
    h = serve(Huge); attempt("300 MB reply", f"http://127.0.0.1:{h.server_address[1]}/score", timeout=10)
    print("  peak RSS MB:", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
