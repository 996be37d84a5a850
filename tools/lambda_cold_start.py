"""Cold start of a Lambda bootstrap, side by side with another build of it.

    python3 tools/lambda_cold_start.py OLD_BOOTSTRAP NEW_BOOTSTRAP [PAIRS]

Measures, for each process: start -> its first Runtime API request (init
done) -> its first event's response (first event handled), under a stand-in
Lambda Runtime API on loopback that hands it one SQS event (a typing event,
which persist acknowledges without touching DynamoDB). The two binaries are
run in turn, pair by pair, and the medians and the median ratio printed.
The bootstraps are what `make build-functions` leaves in
<target>/lambda/<function>/bootstrap."""
import http.server, json, os, socket, statistics, subprocess, sys, threading, time

EVENT = {"Records": [{
    "messageId": "m1", "receiptHandle": "h", "md5OfBody": "x", "eventSource": "aws:sqs",
    "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1",
    "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
    "body": json.dumps({"v": 1, "event_id": "t", "conversation_id": "r", "origin": "gw", "at_ms": 1,
                        "kind": "typing", "user_id": "a", "typing": True}),
}]}

class State:
    def __init__(self):
        self.reset()
    def reset(self):
        self.first_next = None
        self.responded = None
        self.served = False
        self.done = threading.Event()
        self.body = None

state = State()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.endswith("/invocation/next"):
            now = time.perf_counter()
            if state.first_next is None:
                state.first_next = now
            if state.served:
                # Second poll: hold it until the process is killed.
                state.done.wait(10)
                return
            state.served = True
            body = json.dumps(EVENT).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
            self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
            self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:000000000000:function:persist")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        state.body = self.rfile.read(n)
        state.responded = time.perf_counter()
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        state.done.set()

def once(binary):
    # A fresh Runtime API per run: a killed process's late poll must not
    # take the next run's event.
    state.reset()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ,
               AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", AWS_LAMBDA_FUNCTION_NAME="persist",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128", AWS_LAMBDA_FUNCTION_VERSION="1",
               AWS_LAMBDA_LOG_STREAM_NAME="s", AWS_LAMBDA_LOG_GROUP_NAME="g", AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_ENDPOINT_URL="http://127.0.0.1:9",
               RUST_LOG="warn")
    t0 = time.perf_counter()
    p = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = state.done.wait(20)
    p.kill(); p.wait()
    server.shutdown(); server.server_close()
    if not ok or state.first_next is None:
        raise SystemExit(f"{binary}: no response (body {state.body!r})")
    return (state.first_next - t0) * 1000, (state.responded - t0) * 1000

old, new, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20
once(old); once(new)  # warm the page cache
res = {"old": [], "new": []}
for _ in range(runs):
    res["old"].append(once(old))
    res["new"].append(once(new))
for k, v in res.items():
    init = statistics.median(x[0] for x in v)
    handled = statistics.median(x[1] for x in v)
    print(f"{k}: median init (start -> first /next) {init:.2f} ms, start -> first event handled {handled:.2f} ms "
          f"(min {min(x[1] for x in v):.2f}, max {max(x[1] for x in v):.2f}), runs {len(v)}")
ratios = [n[1] / o[1] for o, n in zip(res["old"], res["new"])]
print(f"new/old, start -> first event handled, pair by pair: median {statistics.median(ratios):.3f}")
print("response body:", state.body.decode())
