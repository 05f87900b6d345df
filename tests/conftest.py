from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from anthropic import AnthropicFoundry, AsyncAnthropicFoundry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

from telemetry import Telemetry
from telemetry.emulator import EmulatorServer

API_KEY = "sk-test-SECRET-0123456789abcdefghij"
PG_ENV = "FOUNDRY_TELEMETRY_TEST_PG_URL"
REQUIRE_PG = os.environ.get("FOUNDRY_TELEMETRY_REQUIRE_PG") == "1"


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


class OTel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self, name_prefix: str | None = None) -> list[Any]:
        spans = self.spans.get_finished_spans()
        return [s for s in spans if name_prefix is None or s.name.startswith(name_prefix)]

    def ours(self) -> list[Any]:
        return [s for s in self.spans.get_finished_spans() if s.instrumentation_scope.name == "foundry-telemetry"]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        out = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        out.extend(m.data.data_points)
        return out


@pytest.fixture
def otel() -> OTel:
    return OTel()


def _pg_available(url: str) -> bool:
    try:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                               connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


_created_databases: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    base = os.environ.get(PG_ENV)
    if not base or not _created_databases:
        return
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in _created_databases:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fresh_pg_url() -> str:
    """A new, empty database on the test server, so each test sees only its own rows."""
    base = os.environ.get(PG_ENV)
    if not base or not _pg_available(base):
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here but {PG_ENV} is unset or unreachable")
        pytest.skip(f"no PostgreSQL server ({PG_ENV} unset)")
    name = "ft_" + uuid.uuid4().hex[:12]
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    _created_databases.append(name)
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return fresh_pg_url()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def make_tel(otel: OTel, tmp_path: Any, sqlite_url: str) -> Iterator[Any]:
    made: list[Telemetry] = []

    def make(**kwargs: Any) -> Telemetry:
        kwargs.setdefault("db_url", sqlite_url)
        kwargs.setdefault("spool_dir", str(tmp_path / "spool"))
        kwargs.setdefault("batch_interval_s", 0.05)
        tel = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, **kwargs)
        made.append(tel)
        return tel

    yield make
    for tel in made:
        tel.shutdown()


@pytest.fixture
def tel(make_tel: Any) -> Telemetry:
    return make_tel()


def sdk_kwargs(emulator: EmulatorServer, otel: OTel, **extra: Any) -> dict[str, Any]:
    return {"api_key": API_KEY, "base_url": emulator.base_url,
            "open_telemetry": {"tracer_provider": otel.tracer_provider}, **extra}


@pytest.fixture
def raw_client(emulator: EmulatorServer, otel: OTel) -> AnthropicFoundry:
    return AnthropicFoundry(**sdk_kwargs(emulator, otel))


@pytest.fixture
def client(tel: Telemetry, raw_client: AnthropicFoundry) -> AnthropicFoundry:
    return tel.instrument(raw_client)


@pytest.fixture
def aclient(tel: Telemetry, emulator: EmulatorServer, otel: OTel) -> AsyncAnthropicFoundry:
    return tel.instrument(AsyncAnthropicFoundry(**sdk_kwargs(emulator, otel)))


def rows(url: str) -> list[Any]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from telemetry.ledger.db import get_engine
    from telemetry.ledger.models import UsageRecordRow

    with Session(get_engine(url)) as session:
        return list(session.scalars(select(UsageRecordRow).order_by(UsageRecordRow.created_at)))


MSG = [{"role": "user", "content": "Summarize the quarterly numbers, please."}]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict]:
    """What the real Azure Monitor exporters posted for a run of the driver (shared by export and KQL tests)."""
    from .azure_capture import CaptureServer, run_driver

    with CaptureServer() as server:
        result = run_driver(tmp_path_factory.mktemp("azure"), server.connection_string())
    return server, result
