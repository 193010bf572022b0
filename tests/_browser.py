"""Drive headless Chromium over the DevTools protocol (on a pipe, no extra package) to see TensorBoard.

Used by ``tests/test_browser.py`` and ``scripts/dashboard_screenshots.py``. Chromium is started
with ``--remote-debugging-pipe``: DevTools messages are NUL-terminated JSON on its file
descriptors 3 (commands in) and 4 (replies and events out), so neither a websocket client nor
a browser download is needed. Every wait is bounded; the browser is always stopped.

Usage::

    with Chromium() as browser:
        shot = browser.screenshot_page(url + "#scalars", "out.png", expect=["grad_norm"])
        shot.text      # the page's text, shadow DOM included
        shot.requests  # the requests it made: method, URL, form data
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse

# Flags for a sandboxed-less container without a network: no GPU, no background connections
# (they are refused on a closed network and would only add noise), a fresh profile each time.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# All text of the page, descending into shadow roots (TensorBoard's dashboards are Polymer
# elements whose content lives there); whitespace collapsed.
_PAGE_TEXT_JS = r"""(() => {
  const parts = [];
  const walk = (node) => {
    if (!node) return;
    if (node.nodeType === Node.TEXT_NODE) parts.push(node.textContent);
    if (node.nodeName === 'STYLE' || node.nodeName === 'SCRIPT') return;
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) walk(child);
  };
  walk(document.documentElement);
  return [location.href, document.readyState, parts.join(' ').replace(/\s+/g, ' ')];
})()"""


def dashboard_url(base_url: str, dashboard: str, **state) -> str:
    """The URL of one TensorBoard dashboard with its state in the hash, as TensorBoard writes it:
    ``dashboard_url(url, "scalars", tagFilter="^grad_norm/", _smoothingWeight=0)``."""
    return base_url + "#" + "&".join([dashboard, *(f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in state.items())])


def scroll_to_text_js(text: str) -> str:
    """JavaScript (for `Chromium.screenshot_page`'s `setup_js`) that scrolls the first element
    whose own text is `text` (shadow DOM included) to the top of its scrolling container."""
    return r"""(() => {
  const wanted = %s;
  const find = (node) => {
    if (!node) return null;
    if (node.nodeType === Node.ELEMENT_NODE && node.childElementCount === 0 && node.textContent.trim() === wanted) return node;
    for (const child of [...(node.shadowRoot ? [node.shadowRoot] : []), ...node.childNodes]) {
      const hit = find(child); if (hit) return hit;
    }
    return null;
  };
  const hit = find(document.documentElement);
  if (hit) hit.scrollIntoView({block: 'start'});
  return !!hit;
})()""" % json.dumps(text)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclasses.dataclass(frozen=True)
class Request:
    """One request a page made (`body`: the form data of a POST)."""

    method: str
    url: str
    body: str = ""

    def params(self) -> dict[str, list[str]]:
        """The query and form parameters, ``{name: [values]}``."""
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)
        if self.body.startswith("--"):  # multipart/form-data, as TensorBoard's frontend POSTs
            fields = re.findall(r'Content-Disposition: form-data; name="([^"]+)"\r\n\r\n(.*?)\r\n--', self.body, re.S)
        else:
            fields = urllib.parse.parse_qsl(self.body)
        for name, value in fields:
            params.setdefault(name, []).append(value)
        return params


@dataclasses.dataclass
class PageShot:
    """What a page showed: its text (shadow DOM included), the URLs it requested, the PNG path."""

    url: str
    text: str
    requests: list[Request]
    png: str | None
    seconds: float


    def to(self, route: str) -> list[dict[str, list[str]]]:
        """Parameters of each request the page made to `route` (``"data/plugin/scalars/tags"``)."""
        return [r.params() for r in self.requests if urllib.parse.urlsplit(r.url).path.endswith("/" + route)]


class DevToolsError(RuntimeError):
    """A DevTools command failed, Chromium exited, or a wait ran out of time."""


class Chromium:
    """A headless Chromium with one page, controlled over the DevTools pipe; a context manager."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 900,
                 timeout: float = 30.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError(f"no Chromium found on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
        self.width, self.height, self.timeout = int(width), int(height), float(timeout)
        self._process = None
        self._profile = None
        self._next_id = 0
        self._replies: dict = {}
        self._events: list = []
        self._cond = threading.Condition()
        self._session = None
        self._requests: list[str] = []
        self._pending: set = set()
        self._last_network = 0.0

    # --- process and pipe ---------------------------------------------------------------
    def __enter__(self) -> "Chromium":
        self._profile = tempfile.mkdtemp(prefix="keras_bn_chromium_")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium reads fd 3 and writes fd 4: move the child's ends there through bash
        # (dash cannot name fds above 9); copies above 9 keep `3<&` from clobbering them.
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_child_r, from_child_w):
            os.close(fd)
        argv = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                "--remote-debugging-pipe", f"--window-size={self.width},{self.height}", "about:blank"]
        try:
            self._process = subprocess.Popen(
                ["/bin/bash", "-c", f'exec "$@" 3<&{high_r} 4>&{high_w} {high_r}<&- {high_w}>&-', "chromium", *argv],
                pass_fds=(high_r, high_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            os.close(high_r)
            os.close(high_w)
        threading.Thread(target=self._read_loop, daemon=True, name="chromium-devtools").start()
        try:
            self._open_page()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                self._send_raw({"id": -1, "method": "Browser.close"})
            except OSError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # its own session: the renderer/GPU helpers go too
                process.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)

    def _send_raw(self, message: dict) -> None:
        os.write(self._to_child, json.dumps(message).encode() + b"\0")

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies["closed"] = True
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._on_event(message)
                self._cond.notify_all()

    def _on_event(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            request = params["request"]
            self._requests.append(Request(request["method"], request["url"], request.get("postData", "")))
            self._pending.add(params["requestId"])
        elif method in ("Network.loadingFinished", "Network.loadingFailed"):
            self._pending.discard(params["requestId"])
        else:
            return
        self._last_network = time.monotonic()

    def send(self, method: str, params: dict | None = None, *, timeout: float | None = None,
             session: bool = True) -> dict:
        """Send one DevTools command (to the page's session by default) and return its result."""
        with self._cond:
            self._next_id += 1
            message_id = self._next_id
        message = {"id": message_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        self._send_raw(message)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while message_id not in self._replies:
                left = deadline - time.monotonic()
                if self._replies.get("closed"):
                    raise DevToolsError(f"Chromium exited during {method}")
                if left <= 0:
                    raise DevToolsError(f"no reply to {method} within {timeout or self.timeout:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                  session=False)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    # --- page helpers -------------------------------------------------------------------
    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaiting promises)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise DevToolsError(f"JavaScript error: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    def page_text(self) -> str:
        """All text on the page, shadow DOM included."""
        return self.evaluate(_PAGE_TEXT_JS)[2]

    def _save_screenshot(self, png) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(png, "wb") as f:
            f.write(base64.b64decode(data))

    def screenshot_page(self, url: str, png: str | os.PathLike | None, expect=(), *, timeout: float = 40.0,
                        settle: float = 1.5, setup_js: str | None = None) -> PageShot:
        """Open `url`, wait until every string of `expect` is on the page and the network has been
        quiet for `settle` seconds (at most `timeout` s in all), and save a PNG to `png`.

        `setup_js` (optional) runs once the expected text is there (e.g. to expand a pane);
        the page is then left to settle again. Raises DevToolsError naming what is missing
        when the wait runs out.
        """
        start = time.monotonic()
        with self._cond:
            self._requests, self._pending = [], set()
            self._last_network = start
        self.send("Page.navigate", {"url": "about:blank"})  # a fresh document, not a hash change
        self.send("Page.navigate", {"url": url})
        deadline = start + timeout
        text, ran_setup = "", setup_js is None
        while True:
            try:
                href, state, text = self.evaluate(_PAGE_TEXT_JS)
            except DevToolsError:  # the document is being replaced
                href, state, text = "", "", ""
            missing = [s for s in expect if s not in text] if (
                href.split("#")[0] == url.split("#")[0] and state == "complete") else list(expect)
            with self._cond:
                quiet = not self._pending and time.monotonic() - self._last_network >= settle
            if not missing and not ran_setup:
                self.evaluate(setup_js)
                ran_setup = True
                with self._cond:
                    self._last_network = time.monotonic()
            elif not missing and quiet:
                break
            if time.monotonic() > deadline:
                if png is not None:  # what the page showed instead, to look at
                    self._save_screenshot(png)
                raise DevToolsError(
                    f"{url}: after {timeout:.0f} s the page still lacks {missing} "
                    f"(pending requests: {len(self._pending)}); it shows: {text[:1500]!r}"
                )
            time.sleep(0.25)
        if png is not None:
            self._save_screenshot(png)
        with self._cond:
            requests = list(self._requests)
        return PageShot(url=url, text=text, requests=requests, png=None if png is None else os.fspath(png),
                        seconds=time.monotonic() - start)
