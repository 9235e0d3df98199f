"""The console in a real browser: sign in, see the endpoint and a failed delivery, open it and
see the 500, press Retry and see the new 200 attempt; filters narrow the list; the event log,
the rules, the event types, replay and the live view render; and the page loads nothing from
outside the node. Screenshots of the main pages go to docs/console/."""

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.path.join(ROOT, "docs", "console")
ADMIN = "console-admin-token-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first webhook, 200 to the others."""

    seen = 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Receiver.lock:
            Receiver.seen += 1
            first = Receiver.seen == 1
        # The first answer carries markup: the console must show it as text, never run it.
        body = b'<img src=x onerror="window.__pwned=1">{"error":"down for maintenance"}' if first else b'{"ok":true}'
        self.send_response(500 if first else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def call(base, method, path, token, body=None):
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as res:
        text = res.read()
        return json.loads(text) if text else None


def wait(what, cond, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def main():
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/crm"

    data = tempfile.mkdtemp()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, SWITCHYARD_LISTEN=f"127.0.0.1:{port}", SWITCHYARD_DATA_DIR=data, SWITCHYARD_ADMIN_TOKEN=ADMIN)
    log = open(os.path.join(data, "node.log"), "w")
    node = subprocess.Popen([os.environ["SWITCHYARD_BIN"], "serve", "--dev"], env=env, stdout=log, stderr=log)
    try:
        def ready():
            try:
                return urllib.request.urlopen(base + "/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait("the node", ready)
        ws = call(base, "POST", "/v1/workspaces", ADMIN, {"name": "Acme Health"})
        key = ws["apiKey"]
        ep = call(base, "POST", "/v1/endpoints", key, {"url": hook, "description": "CRM", "retry": {"maxAttempts": 1}, "rateLimit": {"perSecond": 50, "burst": 10}})
        call(base, "POST", "/v1/event-rules", key, {"name": "Notify CRM", "events": ["*"], "actions": [{"type": "webhook", "endpointId": ep["id"]}]})
        failed = call(base, "POST", "/v1/events", key, {"event": "data_record:created", "dataType": {"uuid": "5f3c", "type": "Contact Form", "slug": "contact_form"},
                                                         "dataRecord": {"id": 4567, "fields": {"message": "Hello!"}}})["deliveries"][0]
        wait("the failed delivery", lambda: call(base, "GET", f"/v1/deliveries/{failed}", key)["status"] == "failed")
        others = [call(base, "POST", "/v1/events", key, {"event": "member:created", "member": {"id": n, "name": f"Member {n}"}})["deliveries"][0] for n in range(3)]
        wait("the other deliveries", lambda: all(call(base, "GET", f"/v1/deliveries/{d}", key)["status"] == "succeeded" for d in others))

        os.makedirs(SHOTS, exist_ok=True)
        outside = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                                              "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1300, "height": 850})
            page.on("request", lambda r: None if r.url.startswith(base + "/") else outside.append(r.url))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(base + "/console")
            page.fill("input[name=apiKey]", key)
            page.click("#login button[type=submit]")
            row = page.locator(f"tr[data-endpoint='{ep['id']}']")
            expect(row).to_contain_text(hook)
            expect(row).to_contain_text("closed")
            page.screenshot(path=os.path.join(SHOTS, "endpoints.png"), full_page=True)

            page.click("nav a[href='#/deliveries']")
            expect(page.locator("tr[data-delivery]")).to_have_count(4)
            page.select_option("select[name=status]", "failed")
            page.click("#filters button[type=submit]")
            expect(page.locator("tr[data-delivery]")).to_have_count(1)
            expect(page.locator(f"tr[data-delivery='{failed}']")).to_contain_text("500")
            page.select_option("select[name=status]", "")
            page.select_option("select[name=eventType]", "member:created")
            page.click("#filters button[type=submit]")
            expect(page.locator("tr[data-delivery]")).to_have_count(3)
            page.click("#filters a")
            expect(page.locator("tr[data-delivery]")).to_have_count(4)
            page.screenshot(path=os.path.join(SHOTS, "deliveries.png"), full_page=True)

            page.click(f"tr[data-delivery='{failed}'] a")
            expect(page.locator("[data-attempt='1'] [data-response-status]")).to_have_text("500")
            expect(page.locator("[data-attempt='1'] .response-body")).to_contain_text('<img src=x onerror="window.__pwned=1">')
            assert page.evaluate("window.__pwned") is None, "a receiver's body ran as markup"
            page.screenshot(path=os.path.join(SHOTS, "delivery-failed.png"), full_page=True)
            page.click("#retry")
            expect(page.locator("[data-attempt='2'] [data-response-status]")).to_have_text("200", timeout=20000)
            expect(page.locator("td.status-succeeded")).to_have_count(1)
            page.screenshot(path=os.path.join(SHOTS, "delivery-retried.png"), full_page=True)

            page.click("nav a[href='#/events']")
            expect(page.locator("tr[data-event]")).to_have_count(4)
            page.locator("tr[data-event] a").last.click()
            expect(page.locator("main")).to_contain_text("Hello!")
            page.screenshot(path=os.path.join(SHOTS, "event.png"), full_page=True)

            page.click("nav a[href='#/rules']")
            expect(page.locator("tr[data-rule]")).to_contain_text("Notify CRM")
            page.click("nav a[href='#/event-types']")
            expect(page.locator("[data-type='call:completed']")).to_contain_text("A call ended")
            page.click("nav a[href='#/replay']")
            page.fill("input[name=since]", "2000-01-01T00:00")
            page.click("main form button[type=submit]")
            expect(page.locator("#replay-count")).to_contain_text("0 failed deliveries")
            page.click("nav a[href='#/live']")
            expect(page.locator("tr[data-delivery]")).to_have_count(4)
            page.screenshot(path=os.path.join(SHOTS, "live.png"), full_page=True)

            # Signing out forgets the key: the console asks for one again.
            page.click("#signout")
            expect(page.locator("input[name=apiKey]")).to_be_visible()
            browser.close()
        assert not outside, f"the console loaded from outside the node: {outside}"
        assert not errors, f"script errors: {errors}"
        print("console: sign-in, endpoints, filters, a failed delivery retried to 200, events, rules, types, replay, live; nothing loaded from outside")
    finally:
        node.terminate()
        node.wait(timeout=10)
        receiver.shutdown()


main()
