"""`Telemetry`: owns the settings, the pipeline and the sinks, and instruments clients."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import signal
import threading
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
import httpx2

from .capture.hooks import Capturer
from .capture.middleware import TelemetryMiddleware
from .capture.streams import end_open_streams
from .capture.transport import transport_classes
from .export import OtlpExporters, install_otlp, otlp_exporters
from .finance.discount import Discounts, load_discounts
from .health import Health
from .otel import OTelSink, configure_azure_monitor_export
from .pipeline import Pipeline, RecordSink
from .pricing import PriceTable, load_price_table
from .settings import Settings, redact

log = logging.getLogger("telemetry")
C = TypeVar("C")

_azure_lock = threading.Lock()
_azure_configured: str | None = None
_live: weakref.WeakSet[Telemetry] = weakref.WeakSet()
_sigterm_installed = False


def _ensure_azure_monitor(connection_string: str, otlp: OtlpExporters | None = None) -> None:
    global _azure_configured
    with _azure_lock:
        if _azure_configured is None:
            configure_azure_monitor_export(connection_string, otlp)
            _azure_configured = connection_string
        elif _azure_configured != connection_string:
            log.warning("foundry-telemetry: Azure Monitor is already configured in this process; "
                        "a second connection string is ignored")


def _shutdown_all() -> None:
    end_open_streams()  # streams still open at exit keep their partial usage
    for tel in list(_live):
        tel.shutdown()


def _exit_hook_last() -> None:
    """atexit runs the last-registered hook first: SDK providers installed just now registered their own
    shutdown; re-registering ours makes the pipeline drain into them before they shut down."""
    atexit.unregister(_shutdown_all)
    atexit.register(_shutdown_all)


def _install_sigterm() -> None:
    """Flush on SIGTERM, then die as SIGTERM would have. Only where nobody else handles it."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            _shutdown_all()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)
        _sigterm_installed = True
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        pass


atexit.register(_shutdown_all)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_setting(health: Health, message: str) -> None:
    """One warning per distinct problem per process; every occurrence counted."""
    health.count("settings")
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning("foundry-telemetry: %s", message)


def _first_line(exc: BaseException) -> str:
    return redact((str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])


def _load_prices(settings: Settings, warn: Any) -> PriceTable:
    """The price file and the deployments map are each used when they can be, and dropped alone when not."""

    def attempt(path: str | None, mapping: str | None) -> tuple[PriceTable | None, str]:
        try:
            return load_price_table(path, mapping), ""
        except Exception as exc:  # PriceError, or a broken installation: never stop the app
            return None, _first_line(exc)

    path, mapping = settings.prices_path, settings.deployments
    table, problem = attempt(path, mapping)
    if table is not None:
        return table
    if path and attempt(path, None)[0] is None:
        warn(f"price file (FOUNDRY_TELEMETRY_PRICES) is ignored: {attempt(path, None)[1]}; using the built-in prices")
        path = None
    if mapping and attempt(path, mapping)[0] is None:
        warn(f"deployments map (FOUNDRY_TELEMETRY_DEPLOYMENTS) is ignored: {attempt(path, mapping)[1]}; "
             "deployments are priced by the model they answer")
        mapping = None
    table, problem = attempt(path, mapping)
    if table is not None:
        return table
    warn(f"prices cannot be loaded ({problem}); costs stay NULL")
    return PriceTable()


def _load_discounts(settings: Settings, warn: Any) -> Discounts:
    """Per-resource discounts from the price file; a bad `[discounts]` table falls back to the default one."""
    try:
        return load_discounts(settings.prices_path, settings.discount)
    except Exception as exc:
        warn(f"discounts in the price file are ignored ({_first_line(exc)}); every resource is billed at "
             f"FOUNDRY_TELEMETRY_DISCOUNT={settings.discount}")
        return Discounts(settings.discount)


def _fields(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "problems"}


class Telemetry:
    """Instrument Foundry clients; records go to the ledger and, when configured, to Azure Monitor."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        sinks: Sequence[RecordSink] | None = None,
        **options: Any,
    ) -> None:
        # start-up fails open: a bad setting is one warning and is dropped; the app always starts
        self.health = Health(meter_provider)
        warn = lambda message: _warn_setting(self.health, message)  # noqa: E731
        if settings is None:
            self.settings = Settings.from_env(strict=False, **options)
        else:
            self.settings = Settings.from_env({}, strict=False, **{**_fields(settings), **options})
        for problem in self.settings.problems:
            warn(problem)
        self.prices = _load_prices(self.settings, warn)
        if tracer_provider is None and meter_provider is None:  # the caller's own providers win
            otlp = otlp_exporters(self.health.failed)  # OTEL_EXPORTER_OTLP_*, once per process
            if self.settings.connection_string:
                try:
                    _ensure_azure_monitor(self.settings.connection_string, otlp)
                except Exception as exc:
                    warn(f"APPLICATIONINSIGHTS_CONNECTION_STRING cannot be used ({_first_line(exc)[:200]}); "
                         "Azure Monitor export is off, the usage ledger still records")
            install_otlp(otlp, self.health.failed)  # alone, or what Azure Monitor did not take
            if self.settings.connection_string or otlp:
                _exit_hook_last()
        self._otel = OTelSink(tracer_provider, meter_provider, shortcuts=self.settings.otel_shortcuts)
        all_sinks: list[RecordSink] = list(sinks or ())
        self.ledger = None
        if self.settings.ledger:
            try:
                from .ledger.writer import LedgerWriter

                self.ledger = LedgerWriter(self.settings, self.health)
                all_sinks.insert(0, self.ledger)
            except Exception as exc:
                warn(f"the usage ledger cannot start ({type(exc).__name__}: {_first_line(exc)[:200]}); "
                     "it is off in this process")
        self._pipeline = Pipeline(
            self.prices, all_sinks, self.health, emit=self._otel.emit,
            capture_content=self.settings.capture_content, queue_size=self.settings.queue_size,
            discounts=_load_discounts(self.settings, warn),
            catch_up_after_ms=(self.settings.journal_catch_up_ms or None)
            if self.ledger is not None and self.settings.journal else None,
        )
        self._capturer = Capturer(self._pipeline.submit, self.health.failed,
                                  keep_text=self.settings.capture_content)
        self._middleware = TelemetryMiddleware(self._capturer, self)
        self._closed = False
        _live.add(self)
        _install_sigterm()

    @classmethod
    def from_env(cls, **kwargs: Any) -> Telemetry:
        """The same as `Telemetry(**kwargs)`: the environment, with keyword arguments over it."""
        return cls(**kwargs)

    # -- instrumenting -----------------------------------------------------------------------------

    def instrument(self, client: C) -> C:
        """The same client class back, with a per-attempt middleware; the original is left untouched."""
        try:
            existing = tuple(getattr(client, "middleware", None) or ())
            if any(isinstance(m, TelemetryMiddleware) and m.owner is self for m in existing):
                return client
            return client.with_options(middleware=[*existing, self._middleware])  # type: ignore[attr-defined]
        except Exception as exc:  # not an anthropic client, or an SDK without middleware: leave it as it is
            self.health.count("instrument")
            log.warning("foundry-telemetry: cannot instrument %s (%s); it is returned unchanged",
                        type(client).__name__, type(exc).__name__)
            return client

    def transport(self, inner: Any = None, *, library: Any = httpx, asynchronous: bool = False) -> Any:
        """A capturing transport for `httpx` (default) or `httpx2`, wrapping `inner`."""
        sync_cls, async_cls = transport_classes(library)
        return (async_cls if asynchronous else sync_cls)(self._capturer, inner)

    def httpx_client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=self.transport(kwargs.pop("transport", None)), **kwargs)

    def async_httpx_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport(kwargs.pop("transport", None), asynchronous=True),
                                 **kwargs)

    def httpx2_client(self, **kwargs: Any) -> httpx2.Client:
        """For `AnthropicFoundry(http_client=…)` or raw httpx2 callers."""
        return httpx2.Client(transport=self.transport(kwargs.pop("transport", None), library=httpx2), **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until every record so far is in the ledger (or the spool) and exported."""
        ok = self._pipeline.flush(timeout)
        self._otel.flush()
        return ok

    def shutdown(self, timeout: float | None = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pipeline.close(timeout)
            self._otel.flush()
        except Exception as exc:
            self.health.failed("shutdown", exc)
        _live.discard(self)

    @property
    def capturer(self) -> Capturer:
        """The front door onto the capture state machine, for entry points other than SDK clients (the gateway)."""
        return self._capturer

    @property
    def processed(self) -> int:
        return self._pipeline.processed

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
