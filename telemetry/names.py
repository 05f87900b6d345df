"""Every telemetry name in one place, so a semantic-convention rename is one edit.

GenAI names come from `opentelemetry-semantic-conventions`; the project's own live under `foundry.*`.
Token rule on spans (the GenAI convention, as the SDK's own span does it):
`gen_ai.usage.input_tokens` = uncached input + cache read + cache creation. The ledger keeps them apart.

`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` (read once, at import, as OpenTelemetry's own
instrumentations do) switches to the newest GenAI names, from the conventions' own repository
(semantic-conventions-genai): `gen_ai.usage.cache_creation.input_tokens` → `gen_ai.usage.cache_write.input_tokens`
(changelog 440), and the `gen_ai.client.token.usage` histogram with `gen_ai.token.type` → the
`gen_ai.client.inference.operation.{input,output}_tokens` histograms plus the
`gen_ai.client.inference.usage.*` counters with `gen_ai.token.modality` (changelog 374). The installed
semconv package (0.66b1) has none of these yet: each is taken from it once it does, a literal until then.
"""

from __future__ import annotations

import os

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _ga
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as _gm
from opentelemetry.semconv.attributes import error_attributes as _err
from opentelemetry.semconv.attributes import http_attributes as _http
from opentelemetry.semconv.attributes import server_attributes as _srv

OPT_IN_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
GEN_AI_LATEST_OPT_IN = "gen_ai_latest_experimental"


def latest_opted_in(value: str | None) -> bool:
    """`OTEL_SEMCONV_STABILITY_OPT_IN` is a comma-separated list of opt-ins."""
    return GEN_AI_LATEST_OPT_IN in {v.strip().lower() for v in (value or "").split(",")}


LATEST = latest_opted_in(os.environ.get(OPT_IN_ENV))


def _newest(module: object, constant: str, name: str) -> str:
    """A name the semconv package does not have yet: its constant once it does, the literal until then."""
    return str(getattr(module, constant, None) or name)


INSTRUMENTATION_SCOPE = "foundry-telemetry"
PROVIDER = "anthropic"

# span attributes
OPERATION_NAME = _ga.GEN_AI_OPERATION_NAME
PROVIDER_NAME = _ga.GEN_AI_PROVIDER_NAME
SYSTEM = _ga.GEN_AI_SYSTEM  # App Insights derives the dependency type from it
REQUEST_MODEL = _ga.GEN_AI_REQUEST_MODEL
REQUEST_MAX_TOKENS = _ga.GEN_AI_REQUEST_MAX_TOKENS
REQUEST_STREAM = _ga.GEN_AI_REQUEST_STREAM
RESPONSE_MODEL = _ga.GEN_AI_RESPONSE_MODEL
RESPONSE_ID = _ga.GEN_AI_RESPONSE_ID
RESPONSE_FINISH_REASONS = _ga.GEN_AI_RESPONSE_FINISH_REASONS
USAGE_INPUT_TOKENS = _ga.GEN_AI_USAGE_INPUT_TOKENS
USAGE_OUTPUT_TOKENS = _ga.GEN_AI_USAGE_OUTPUT_TOKENS
USAGE_CACHE_CREATION_INPUT_TOKENS = (
    _newest(_ga, "GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS", "gen_ai.usage.cache_write.input_tokens") if LATEST
    else _ga.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS)
USAGE_CACHE_READ_INPUT_TOKENS = _ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
RESPONSE_TIME_TO_FIRST_CHUNK = _ga.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
TOKEN_TYPE = _ga.GEN_AI_TOKEN_TYPE
TOKEN_MODALITY = _newest(_ga, "GEN_AI_TOKEN_MODALITY", "gen_ai.token.modality")
SERVER_ADDRESS = _srv.SERVER_ADDRESS
SERVER_PORT = _srv.SERVER_PORT
HTTP_STATUS_CODE = _http.HTTP_RESPONSE_STATUS_CODE
ERROR_TYPE = _err.ERROR_TYPE

# the project's own (they survive the Azure Monitor exporter, which drops `http.*`)
FOUNDRY_REQUEST_ID = "foundry.request_id"
FOUNDRY_APIM_REQUEST_ID = "foundry.apim_request_id"
FOUNDRY_RESOURCE = "foundry.resource"
FOUNDRY_DEPLOYMENT = "foundry.deployment"
FOUNDRY_OPERATION_ID = "foundry.operation_id"
FOUNDRY_ATTEMPT = "foundry.attempt"
FOUNDRY_TEAM = "foundry.team"
FOUNDRY_PROJECT = "foundry.project"
FOUNDRY_USER = "foundry.user"
FOUNDRY_COST_USD = "foundry.cost_usd"  # list price
FOUNDRY_BILLED_COST_USD = "foundry.billed_cost_usd"  # after the contractual discount, what the bill meters
FOUNDRY_STATUS_CODE = "foundry.status_code"
FOUNDRY_ERROR_TYPE = "foundry.error_type"  # the Azure Monitor exporter drops `error.type` from customDimensions
FOUNDRY_CACHE_KIND = "foundry.cache.kind"
FOUNDRY_PROMPT = "foundry.prompt"
FOUNDRY_COMPLETION = "foundry.completion"

# metrics
METRIC_TOKEN_USAGE = _gm.GEN_AI_CLIENT_TOKEN_USAGE
METRIC_DURATION = _gm.GEN_AI_CLIENT_OPERATION_DURATION
METRIC_TTFC = _gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK
METRIC_TPOC = _gm.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK
METRIC_INFERENCE_INPUT = _newest(_gm, "GEN_AI_CLIENT_INFERENCE_OPERATION_INPUT_TOKENS",
                                 "gen_ai.client.inference.operation.input_tokens")
METRIC_INFERENCE_OUTPUT = _newest(_gm, "GEN_AI_CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS",
                                  "gen_ai.client.inference.operation.output_tokens")
# token histograms: kind → (metric name, extra attributes)
TOKEN_HISTOGRAMS: dict[str, tuple[str, dict[str, str]]] = (
    {"input": (METRIC_INFERENCE_INPUT, {}), "output": (METRIC_INFERENCE_OUTPUT, {})} if LATEST
    else {"input": (METRIC_TOKEN_USAGE, {TOKEN_TYPE: "input"}), "output": (METRIC_TOKEN_USAGE, {TOKEN_TYPE: "output"})})
# token counters (newest conventions only): kind → metric name. `input` includes cache read and write, as on
# the span; the API reports no per-modality split, so `gen_ai.token.modality` is "unknown".
TOKEN_COUNTERS: dict[str, str] = {
    "input": _newest(_gm, "GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS",
                     "gen_ai.client.inference.usage.input_tokens"),
    "output": _newest(_gm, "GEN_AI_CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS",
                      "gen_ai.client.inference.usage.output_tokens"),
    "cache_read": _newest(_gm, "GEN_AI_CLIENT_INFERENCE_USAGE_CACHE_READ_INPUT_TOKENS",
                          "gen_ai.client.inference.usage.cache_read.input_tokens"),
    "cache_write": _newest(_gm, "GEN_AI_CLIENT_INFERENCE_USAGE_CACHE_WRITE_INPUT_TOKENS",
                           "gen_ai.client.inference.usage.cache_write.input_tokens"),
} if LATEST else {}
TOKEN_COUNTER_ATTRIBUTES = {TOKEN_MODALITY: "unknown"}
METRIC_COST = "foundry.client.cost"
METRIC_CACHE_TOKENS = "foundry.client.cache_tokens"
METRIC_FAILURES = "foundry.telemetry.failures"  # counter, by FOUNDRY_FAILURE_KIND
FOUNDRY_FAILURE_KIND = "foundry.failure.kind"

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
