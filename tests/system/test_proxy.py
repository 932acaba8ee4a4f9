"""An outbound proxy, as a company network has one: the real daemon reaches
NFON, Entra ID + Graph, Slack and a webhook, all over HTTPS, through a
CONNECT proxy on loopback when ``HTTPS_PROXY`` says so, and around it for
the hosts ``NO_PROXY`` names. Every client follows the same two variables."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import HOOK_SECRET, PEOPLE, Daemon
from polling import eventually

from presence_sync.sim.certs import LoopbackTls
from presence_sync.sim.graph import GraphSim
from presence_sync.sim.graph_http import build_app as graph_app
from presence_sync.sim.nfon import NfonSim, SimProxy
from presence_sync.sim.nfon_http import build_app as nfon_app
from presence_sync.sim.serve import Running, serve_in_thread
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_http import build_app as slack_app
from presence_sync.sim.webhook import WebhookReceiver

pytestmark = pytest.mark.system

ANNA = "anna@example.com"
MS_SECRET = "proxy-test-graph-secret"


class ConnectProxy:
    """A forward proxy that only tunnels (``CONNECT host:port``), as HTTPS
    through a company proxy works. ``tunnels`` lists each ``host:port``
    asked for; anything but CONNECT is answered 405 and listed in
    ``refused``."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.tunnels)

    def _handle(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        if method != "CONNECT":
            with self._lock:
                self.refused.append(request_line)
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        with self._lock:
            self.tunnels.append(target)
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(client, upstream)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 30)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peers[sock].sendall(data)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    running = ConnectProxy()
    yield running
    running.close()


class Upstreams:
    """NFON, Graph, Slack and a webhook receiver, each over HTTPS on loopback,
    and the configuration that points the daemon at them."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        tls = LoopbackTls.create(tmp / "tls")
        serve = tls.serve_options()

        nfon = NfonSim(extensions=[(ext, name) for ext, name, _ in PEOPLE], keepalive=5.0)
        nfon.start_serving()
        self.nfon_running = stack.enter_context(serve_in_thread(nfon_app(nfon), **serve))
        stack.callback(self.nfon_running.call, nfon.shutdown)
        self.nfon = SimProxy(nfon, self.nfon_running)

        self.hook = WebhookReceiver(secret=HOOK_SECRET)
        self.hook_running = stack.enter_context(serve_in_thread(self.hook.app, **serve))

        self.slack = SlackSim()
        admin = self.slack.add_user("adam", "it-admin@example.com", role="admin")
        self.anna_slack = self.slack.add_user("anna", ANNA)
        slack_token = self.slack.add_token(admin).secret
        self.slack_running = stack.enter_context(serve_in_thread(slack_app(self.slack), **serve))

        # Entra ID and Graph on two origins, as login.microsoftonline.com and
        # graph.microsoft.com are: MSAL's requests and the Graph calls are
        # made by different clients, and each must use the proxy.
        self.graph = GraphSim()
        client_id = self.graph.register_app(secret=MS_SECRET)
        self.anna_graph = self.graph.add_user(ANNA)
        self.graph.sign_in_client(self.anna_graph, "Available")
        self.entra_running = stack.enter_context(serve_in_thread(graph_app(self.graph), **serve))
        self.graph_running = stack.enter_context(serve_in_thread(graph_app(self.graph), **serve))
        self.graph.accept_resource(self.graph_running.origin)

        people = "".join(
            f'  - extension: "{ext}"\n    email: {email}\n' for ext, _, email in PEOPLE
        )
        self.config = tmp / "config.yaml"
        self.config.write_text(
            f"""nfon:
  base_url: {self.nfon_running.origin}/v1
  customer: K1234
  username: api-user
  password: api-secret
microsoft:
  tenant_id: {self.graph.tenant}
  client_id: {client_id}
  client_secret: {MS_SECRET}
  authority: {self.entra_running.origin}
  graph_url: {self.graph_running.origin}
slack:
  base_url: {self.slack_running.origin}/api/
  token: {slack_token}
tls:
  ca_bundle: {tls.ca_file}
people:
{people}targets:
  webhook:
    url: {self.hook_running.origin}/hook
    secret: {HOOK_SECRET}
  teams_presence: {{}}
  slack_status: {{}}
rules:
  - when: {{line: in-use}}
    set:
      teams_presence: {{availability: Busy, activity: InACall}}
      slack_status: {{text: "On a call", emoji: ":telephone_receiver:"}}
      webhook: {{availability: Busy, activity: InACall}}
state:
  path: {tmp / "state.db"}
http:
  listen: "127.0.0.1:0"
logging:
  level: info
  format: text
"""
        )

    def origins(self) -> dict[str, str]:
        """``host:port`` of each upstream, by what it is."""
        return {
            "NFON": _hostport(self.nfon_running),
            "webhook": _hostport(self.hook_running),
            "Slack": _hostport(self.slack_running),
            "Entra ID (MSAL)": _hostport(self.entra_running),
            "Graph": _hostport(self.graph_running),
        }

    def everywhere_in_a_call(self) -> bool:
        graph = self.graph.presence(self.anna_graph)
        hooks = [
            d.body
            for d in self.hook.deliveries
            if d.accepted and isinstance(d.body, dict) and d.body["person"]["email"] == ANNA
        ]
        return (
            (graph["availability"], graph["activity"]) == ("Busy", "InACall")
            and self.slack.status_of(self.anna_slack).text == "On a call"
            and any((h["status"] or {}).get("activity") == "InACall" for h in hooks)
        )


def _hostport(running: Running) -> str:
    return f"{running.host}:{running.port}"


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[Upstreams]:
    with contextlib.ExitStack() as stack:
        yield Upstreams(stack, tmp_path)


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_of_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon inherits this process's environment: only the test's own
    proxy variables may reach it."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_every_client_goes_through_https_proxy(
    upstreams: Upstreams, proxy: ConnectProxy, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(upstreams.config), env={"HTTPS_PROXY": proxy.url})
    daemon.wait_ready()
    upstreams.nfon.call("100")
    eventually(upstreams.everywhere_in_a_call, "Anna in a call in Teams, Slack and the webhook")

    seen = proxy.seen()
    missing = {what: where for what, where in upstreams.origins().items() if where not in seen}
    assert not missing, f"connected around the proxy: {missing}; tunnels: {sorted(seen)}"
    assert proxy.refused == []


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"NO_PROXY": "localhost,127.0.0.1"}, id="NO_PROXY-names-the-hosts"),
        pytest.param({"HTTPS_PROXY": "", "HTTP_PROXY": "PROXY"}, id="HTTP_PROXY-is-for-http-only"),
    ],
)
def test_connects_directly_where_the_variables_say_so(
    upstreams: Upstreams,
    proxy: ConnectProxy,
    daemons: Callable[..., Daemon],
    env: dict[str, str],
) -> None:
    env = {"HTTPS_PROXY": proxy.url, **env}
    env = {k: proxy.url if v == "PROXY" else v for k, v in env.items() if v}
    daemon = daemons("run", "-c", str(upstreams.config), env=env)
    daemon.wait_ready()
    upstreams.nfon.call("100")
    eventually(upstreams.everywhere_in_a_call, "Anna in a call in Teams, Slack and the webhook")

    assert proxy.seen() == set()
    assert proxy.refused == []
