"""Server settings: one pydantic-settings class; flags and CONVSERVE_* env vars map onto it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpus import available_cpus

__all__ = ["ACCESS_LOGGER", "WORKER_ENV", "Settings", "settings_table"]

# One INFO line per answered call or stream message; `convserve serve --access-log true`.
ACCESS_LOGGER = "convserve.access"
# Set by `--workers` for its children, the only processes that may share a port.
WORKER_ENV = "CONVSERVE_SHARED_PORT_WORKER"


class Settings(BaseSettings):
    """Every knob of `convserve serve`. Flag `--models-dir` = env `CONVSERVE_MODELS_DIR`."""

    model_config = SettingsConfigDict(env_prefix="CONVSERVE_", frozen=True, extra="forbid")

    host: str = Field("0.0.0.0", description="address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port)")
    http_port: int = Field(
        8080,
        ge=-1,
        le=65535,
        description="HTTP port on the same host: the Open Inference Protocol's REST API and "
        "convserve's own API as JSON (0: any free port, -1: off)",
    )
    explorer: bool = Field(
        True,
        description="serve the explorer page (what each layer of a served model sees) at / "
        "on the HTTP port; it calls the HTTP API, with the caller's token",
    )
    metrics_host: str = Field("0.0.0.0", description="address the Prometheus /metrics server binds")
    metrics_port: int = Field(
        8000, ge=-1, le=65535, description="Prometheus /metrics port (0: any free port, -1: off)"
    )
    models_dir: Path = Field(
        Path("models"), description="the model repository: MODELS_DIR/NAME/VERSION/"
    )
    model_name: str = Field(
        "",
        description="serve MODELS_DIR as this one model when it holds a model's versions "
        "(VERSION/) or one version's files, as KServe mounts /mnt/models; a repository "
        "(NAME/VERSION/) keeps its names",
    )
    default_model: str = Field(
        "", description="model that answers requests naming none (empty: the only model, if one)"
    )
    version_policy: str = Field(
        "latest:1",
        description="versions served: latest:N, all or specific:V,V; per model NAME=POLICY, "
        "space-separated (e.g. 'latest:1 fashion=all')",
    )
    poll_seconds: float = Field(
        2.0,
        ge=0,
        description="how often MODELS_DIR is rescanned for new, changed or removed "
        "versions (0: never)",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest request or response message, in bytes"
    )
    max_images: int = Field(4096, ge=1, description="most images one request may carry")
    max_concurrent_requests: int = Field(
        1024,
        ge=1,
        description="calls answered at once (health checks excepted); more are refused at once "
        "with RESOURCE_EXHAUSTED",
    )
    max_queued_requests: int = Field(
        64,
        ge=1,
        description="requests waiting in one model version's batch queue; more are refused at "
        "once with RESOURCE_EXHAUSTED",
    )
    max_pending_requests: int = Field(
        256,
        ge=2,
        description="calls received but not yet taken up (overload): past this gRPC itself "
        "refuses new ones at once, at random past half of it; they end CANCELLED",
    )
    inference_threads: int = Field(
        2,
        ge=1,
        description="worker threads that run inference; also the batches run at once per model",
    )
    onnx_threads: int = Field(
        1,
        ge=1,
        description="ONNX Runtime's intra-op threads per call; with one worker per CPU, 1 "
        "(measured: see docs/performance.md)",
    )
    max_batch_size: int = Field(
        64,
        ge=1,
        description="most images the batcher puts in one batch (a larger request runs alone); "
        "64 served 64-image requests as fast as 256 with 60 MB less per worker (measured)",
    )
    inline_max_ms: float = Field(
        2.0,
        ge=0,
        description="Predict batches and feature maps that the model's warm-up timing says "
        "take at most this long run on the event loop, not a thread (0: never); for the seed "
        "model every batch: measured faster (see docs/performance.md)",
    )
    max_batch_delay_ms: float = Field(
        0.0, ge=0, description="how long a partial batch may wait for more requests (0: never)"
    )
    workers: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="server processes, each with every model, sharing the gRPC port "
        "(SO_REUSEPORT) and acting as one server (load and unload reach every worker before "
        "they return, one metrics port, a worker that dies is replaced); default one per CPU "
        "available to the process (CPU affinity and cgroup quota), --workers N overrides",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="each worker's event loop: uvloop (libuv's, the faster: see "
        "docs/performance.md) or Python's own asyncio loop",
    )
    cpu_affinity: bool = Field(
        True,
        description="with one worker per CPU of the process's affinity, pin worker i's event "
        "loop and gRPC's threads to the i-th CPU (a call's hand-offs stay on one core), gRPC's "
        "at the lowest priority so they run when the loop waits; its inference threads use "
        "every CPU (measured: see docs/performance.md)",
    )
    drain_seconds: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM, how long to keep answering while health says NOT_SERVING, so "
        "load balancers stop sending first (the container image sets 5)",
    )
    grace_seconds: float = Field(
        10.0, ge=0, description="then how long in-flight requests may take to finish"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="logging level"
    )
    access_log: bool = Field(
        False,
        description="log one line per answered call: request id, method, model, version, "
        "status code and milliseconds",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or one JSON object per line (for log shippers)"
    )

    tls_cert: Path | None = Field(
        None, description="PEM certificate chain: serve over TLS (with tls_key)"
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA certificates: require a client certificate one of them signed "
        "(mutual TLS)",
    )
    auth_tokens_file: Path | None = Field(
        None,
        description="bearer tokens, a TOKEN:SCOPE line each (scope inference or admin); with "
        "tokens every call but health needs one, and only admin may load and unload models",
    )
    auth_tokens: SecretStr = Field(
        SecretStr(""),
        description="more tokens as TOKEN:SCOPE, separated by spaces (set it in the environment, "
        "not on the command line)",
    )
    reflection: bool = Field(True, description="serve gRPC reflection (behind the tokens, if any)")

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        from service.tokens import load_tokens

        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca, self.auth_tokens_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a file")
        load_tokens(self)  # raises what is wrong with an entry, never the token
        return self

    @field_validator("version_policy")
    @classmethod
    def _parse_policy(cls, value: str) -> str:
        from service.policies import parse_policies

        parse_policies(value)  # raises ValueError with what is expected
        return value


def settings_table() -> str:
    """The settings table of docs/serving.md, generated from the fields so that they agree."""
    rows = [
        "| flag | environment | default | meaning |",
        "|------|-------------|---------|---------|",
    ]
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        default = f"`{default}`" if default not in ("", None) else '""' if default == "" else "none"
        if field.default_factory is available_cpus:  # the machine's count: no fixed number
            default = "CPUs available"
        rows.append(f"| `{flag}` | `CONVSERVE_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)
