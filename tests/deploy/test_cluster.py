"""deploy/'s topology for real on loopback (`make cluster-test`): 3 replicas, Envoy, Prometheus.

The client has its own retries off (`retries=0`): every failure Envoy lets through is counted.
The tests run in file order against one cluster; the kill -9 test restarts its replica.
Envoy's HTTP health checks (`GET /v2/health/ready`) are requests too, counted with
`protocol="http"`: the counts of gRPC calls below are of `protocol="grpc"` only.
"""

from __future__ import annotations

import collections
import itertools
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import Client
from client.errors import ConvserveError
from tests.conftest import http_get, metric
from tests.deploy.topology import DEPLOY, Cluster, Replica, running, wait_until

CALLERS = 8


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(models_dir, tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(autouse=True)
def every_replica_serving(cluster: Cluster) -> None:
    """Each test starts with every replica up and healthy in Envoy (gRPC and HTTP), whatever
    ran before it (an earlier test may have stopped one)."""
    for replica in cluster.replicas:
        if replica.process.poll() is not None:
            replica.start()
    wait_until(cluster.all_healthy, "every replica healthy in Envoy", 120)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from convserve.fashion_mnist import load

    return load("test", limit=256).images


class Load:
    """CALLERS threads calling Predict through Envoy, counting outcomes by gRPC code."""

    def __init__(self, target: str, images: np.ndarray, model: str | None = None) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.messages: dict[str, str] = {}  # the last message of each failure code
        self._client = Client(target, retries=0, timeout=10)
        self._images, self._model = images, model
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def call(self, index: int) -> None:
        image = self._images[index % len(self._images)][None]
        try:
            self._client.predict(image, model=self._model)
            outcome = "OK"
        except ConvserveError as exc:
            outcome = exc.code.name
            self.messages[outcome] = str(exc)
        with self._lock:
            self.outcomes[outcome] += 1

    def start(self, requests: int | None = None) -> None:
        """CALLERS threads calling until `requests` calls were made, or until `stop()`."""
        issued = itertools.count()

        def caller() -> None:
            while not self._stop.is_set():
                with self._lock:
                    index = next(issued)
                if requests is not None and index >= requests:
                    return
                self.call(index)

        self._threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> collections.Counter[str]:
        """Stop calling; every outcome so far."""
        self._stop.set()
        self._join()
        self._stop.clear()
        return self.outcomes

    def send(self, requests: int) -> collections.Counter[str]:
        """`requests` more calls; every outcome so far."""
        self.start(requests)
        self._join()
        return self.outcomes

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def total(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())


def answered(replica: Replica) -> int:
    """The replica's own count of gRPC calls answered (every method and code), from /metrics."""
    families = text_string_to_metric_families(http_get(replica.metrics_url))
    family = next(f for f in families if f.name == "convserve_requests")
    return int(sum(
        sample.value for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["protocol"] == "grpc"
    ))  # fmt: skip


def test_requests_spread_over_the_replicas(cluster: Cluster, images: np.ndarray) -> None:
    before = [answered(replica) for replica in cluster.replicas]
    outcomes = Load(cluster.target, images).send(3000)
    assert outcomes == {"OK": 3000}
    served = [answered(replica) - b for replica, b in zip(cluster.replicas, before, strict=True)]
    assert sum(served) == 3000
    shares = [count / 3000 for count in served]
    print(f"\nspread over 3,000 requests: {served} = {[f'{s:.1%}' for s in shares]}")
    assert all(0.25 <= share <= 0.42 for share in shares), shares


def _http(url: str, body: object = None) -> tuple[int, dict[str, Any]]:
    """GET `url`, or POST `body` to it as JSON: (status, the JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _infer_body(image: np.ndarray) -> dict[str, Any]:
    """A V2 REST inference request: one 28×28 uint8 image as JSON numbers."""
    data = image.reshape(-1).tolist()
    return {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 784], "data": data}]}


def inferred_over_http(replica: Replica) -> int:
    """The replica's own count of V2 inferences answered over HTTP, from /metrics."""
    page = http_get(replica.metrics_url)
    return int(metric(page, "convserve_requests_total", method="ModelInfer", protocol="http"))


def test_http_through_envoy_is_ready_infers_and_spreads_over_the_replicas(
    cluster: Cluster, images: np.ndarray
) -> None:
    assert _http(f"{cluster.http}/v2/health/ready") == (200, {"ready": True})

    url = f"{cluster.http}/v2/models/fashion/infer"
    before = [inferred_over_http(replica) for replica in cluster.replicas]
    with ThreadPoolExecutor(CALLERS) as pool:
        answers = list(pool.map(lambda i: _http(url, _infer_body(images[i % len(images)])),
                                range(600)))  # fmt: skip
    assert [status for status, _ in answers] == [200] * 600, [a for a in answers if a[0] != 200]
    for _, answer in answers[:3]:
        (output,) = [o for o in answer["outputs"] if o["name"] == "probabilities"]
        assert output["shape"] == [1, 10] and len(output["data"]) == 10
        assert abs(sum(output["data"]) - 1) < 1e-4
    served = [inferred_over_http(r) - b for r, b in zip(cluster.replicas, before, strict=True)]
    assert sum(served) == 600
    shares = [count / 600 for count in served]
    print(f"\nHTTP spread over 600 inferences: {served} = {[f'{s:.1%}' for s in shares]}")
    assert all(0.2 <= share <= 0.47 for share in shares), shares


def test_prometheus_counts_every_request_of_every_replica(
    cluster: Cluster, images: np.ndarray
) -> None:
    def prometheus_total() -> int:
        query = 'convserve_requests_total{protocol="grpc"}'
        return int(sum(float(r["value"][1]) for r in cluster.query(query)))

    settled = sum(answered(replica) for replica in cluster.replicas)
    wait_until(lambda: prometheus_total() == settled, "Prometheus to scrape every replica", 30)

    good = Load(cluster.target, images).send(500)
    bad = Load(cluster.target, images, model="shoes").send(20)  # NOT_FOUND is not retried
    assert (good, bad) == ({"OK": 500}, {"NOT_FOUND": 20})
    wait_until(lambda: prometheus_total() == settled + 520, "Prometheus to count 520 more", 30)

    by_replica = cluster.query("sum by (instance) (convserve_requests_total)")
    instances = {f"127.0.0.1:{replica.metrics_port}" for replica in cluster.replicas}
    assert {r["metric"]["instance"] for r in by_replica} == instances
    print(f"\nPrometheus: {prometheus_total()} requests = {settled} + 520 sent in this test")


def test_every_dashboard_query_has_data(cluster: Cluster, images: np.ndarray) -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/convserve.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    # Answers and failures for every panel, kept coming: a rate needs two scrapes of a series.
    load = Load(cluster.target, images)
    load.start()
    Load(cluster.target, images, model="shoes").send(20)
    try:
        for query in (q.replace("$__rate_interval", "1m") for q in queries):
            wait_until(lambda q=query: bool(cluster.query(q)), f"data for {query}", 30)
    finally:
        load.stop()
    per_replica = cluster.query(queries[0].replace("$__rate_interval", "1m"))
    assert len(per_replica) == len(cluster.replicas)


def test_the_dashboard_shows_every_worker_of_every_replica_serving_each_version(
    cluster: Cluster,
) -> None:
    """Every replica loads the same models: each version's share of the workers is 1."""
    dashboard = json.loads((DEPLOY / "grafana/dashboards/convserve.json").read_text())
    (query,) = [t["expr"] for p in dashboard["panels"] for t in p["targets"]
                if "convserve_model_loaded" in t["expr"]]  # fmt: skip

    def everywhere() -> bool:
        workers = [float(r["value"][1]) for r in cluster.query("sum(convserve_workers)")]
        shares = [float(r["value"][1]) for r in cluster.query(query)]
        # One worker per replica here (--workers 1), every version loaded by each.
        return workers == [len(cluster.replicas)] and bool(shares) and set(shares) == {1.0}

    wait_until(everywhere, f"{query} to be 1 for every version, over 3 workers", 30)


def _during_load(cluster: Cluster, images: np.ndarray, event: object) -> tuple[int, int, int]:
    """Continuous load; `event()` after 1.5 s; 3 s after it returns.

    Returns (requests, requests after the event began, Envoy's retries)."""
    retries_before = _envoy_retries(cluster)
    load = Load(cluster.target, images)
    load.start()
    time.sleep(1.5)
    at_event = load.total()
    event()  # type: ignore[operator]
    time.sleep(3)
    outcomes = load.stop()
    total = sum(outcomes.values())
    assert outcomes == {"OK": total}, f"failed requests: {outcomes} {load.messages}"
    return total, total - at_event, _envoy_retries(cluster) - retries_before


def _envoy_retries(cluster: Cluster, name: str = "convserve") -> int:
    stats = http_get(f"{cluster.envoy_admin}/stats?filter=^cluster.{name}.upstream_rq_retry$")
    return int(stats.split(":")[1])


def test_kill_9_of_a_replica_under_load_fails_no_request(
    cluster: Cluster, images: np.ndarray
) -> None:
    victim = cluster.replicas[0]
    total, after, retries = _during_load(cluster, images, victim.process.kill)
    assert victim.process.wait(timeout=10) == -signal.SIGKILL
    assert after > 100  # the other replicas kept answering
    wait_until(lambda: cluster.healthy_replicas() == 2, "Envoy to drop the dead replica", 10)
    print(f"\nkill -9: {total} requests, {after} after the kill, 0 failed, {retries} retried")

    # Restarted, as an orchestrator would: it answers again once its health check passes and
    # its outlier ejection (10 s) has run out.
    victim.start()
    load = Load(cluster.target, images)
    wait_until(lambda: load.send(50) and answered(victim) > 0, "the replica to rejoin", 120)
    assert load.outcomes == {"OK": load.total()}


def test_sigterm_drains_a_replica_under_load_and_fails_no_request(
    cluster: Cluster, images: np.ndarray
) -> None:
    replica = cluster.replicas[1]

    def stop() -> None:
        replica.process.send_signal(signal.SIGTERM)
        assert replica.process.wait(timeout=30) == 0  # after 5 s of drain

    total, after, retries = _during_load(cluster, images, stop)
    assert "stopped" in replica.log.read_text()
    assert after > 100
    print(f"\nSIGTERM: {total} requests, {after} after the signal, 0 failed, {retries} retried")


class HttpLoad:
    """CALLERS threads POSTing V2 inferences through Envoy's HTTP listener until `stop()`,
    counting outcomes by HTTP status (or the error, when no answer came)."""

    def __init__(self, url: str, images: np.ndarray) -> None:
        self.outcomes: collections.Counter[int | str] = collections.Counter()
        self._url, self._images = url, images
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller, args=(i,)) for i in range(CALLERS)]

    def _caller(self, first: int) -> None:
        for index in itertools.count(first, CALLERS):
            if self._stop.is_set():
                return
            outcome: int | str
            try:
                outcome, _ = _http(self._url, _infer_body(self._images[index % len(self._images)]))
            except OSError as exc:
                outcome = repr(exc)
            with self._lock:
                self.outcomes[outcome] += 1

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> collections.Counter[int | str]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.outcomes

    def total(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_replica_stopping_under_http_load_fails_no_http_request(
    cluster: Cluster, images: np.ndarray, signum: signal.Signals
) -> None:
    """Envoy's HTTP route retries what a stopping replica could not answer (a refused or
    reset connection, a 503), as its gRPC route does."""
    replica = cluster.replicas[2]
    retries_before = _envoy_retries(cluster, "convserve_http")
    load = HttpLoad(f"{cluster.http}/v2/models/fashion/infer", images)
    load.start()
    try:
        time.sleep(1.5)
        at_signal = load.total()
        replica.process.send_signal(signum)
        replica.process.wait(timeout=30)  # SIGTERM: after 5 s of drain
        time.sleep(3)
    finally:
        outcomes = load.stop()
    total = sum(outcomes.values())
    assert outcomes == {200: total}, outcomes
    assert total - at_signal > 100  # the other replicas kept answering
    retries = _envoy_retries(cluster, "convserve_http") - retries_before
    print(f"\n{signum.name} over HTTP: {total} requests, {total - at_signal} after it, 0 failed, "
          f"{retries} retried")  # fmt: skip


def test_the_explorer_page_works_through_envoy(cluster: Cluster, images: np.ndarray) -> None:
    """The page and every call it makes go through Envoy's HTTP listener to the replicas."""
    from tests.browser import Page, chromium, png

    with chromium() as browser:
        page = Page(browser, f"{cluster.http}/")
        try:
            page.wait_for_model()
            with Client(cluster.target, retries=0) as client:
                for image in images[:3]:
                    page.upload(png(image), "item.png")
                    pane = page.wait_analysed()
                    top = pane.locator(".bars li.top").get_attribute("data-class")
                    assert top == client.predict(image[None]).top[0][0].name
            assert page.problems == []
            assert all(url.startswith((cluster.http, "blob:", "data:")) for url in page.requests)
        finally:
            page.close()
