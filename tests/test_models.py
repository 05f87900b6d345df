"""Today's models: what the demo, README and emulator defaults call is not deprecated by the installed SDK
(which warns at call time, `DeprecationWarning`, for models it lists with an end-of-life date), and the
retired models stay callable in the emulator for old code and tests."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from anthropic import AnthropicFoundry

from telemetry.demo import DEMO_DEPLOYMENTS, DEPLOYMENTS
from telemetry.emulator import DEFAULT_DEPLOYMENTS

from .conftest import API_KEY, MSG

README = Path(__file__).resolve().parents[1] / "README.md"
TODAY = {"claude-sonnet-5-5", "claude-haiku-5-5", "claude-opus-5-5"}


def _deprecation_warnings(client: AnthropicFoundry, model: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.messages.create(model=model, max_tokens=8, messages=MSG)
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and model in str(w.message)]


def _readme_models() -> set[str]:
    text = README.read_text("utf-8")
    called = set(re.findall(r'model="(claude-[a-z0-9-]+)"', text))
    mapped = {m for m in re.findall(r"=(claude-[a-z0-9-]+)", text)}
    return called | mapped


def test_demo_readme_and_emulator_use_todays_models(emulator):
    client = AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url)
    mapped = {spec.split("=")[1].split("*")[0] for spec in DEMO_DEPLOYMENTS.split(",")}
    readme = _readme_models()
    assert readme and readme <= TODAY, readme
    assert mapped <= TODAY and set(DEPLOYMENTS) | mapped >= TODAY
    for model in sorted(set(DEPLOYMENTS) | mapped | readme):
        assert not _deprecation_warnings(client, model), model
    for deployment in DEPLOYMENTS:  # custom names answer with a current model too
        assert DEFAULT_DEPLOYMENTS[deployment].startswith(tuple(TODAY)), deployment


def test_the_check_can_fail_and_retired_models_still_answer(emulator):
    """A retired model the installed SDK lists is still served by the emulator, and the SDK does warn."""
    from anthropic._data import DEPRECATED_MODELS  # only to pick a listed model; the warning is the SDK's own

    client = AnthropicFoundry(api_key=API_KEY, base_url=emulator.base_url)
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5", "my-claude", "batchy"):
        assert client.messages.create(model=model, max_tokens=8, messages=MSG).content
    listed = sorted(m for m in DEPRECATED_MODELS if m in DEFAULT_DEPLOYMENTS)
    assert listed, "the installed SDK lists none of the emulator's retired models: pick another to prove the check"
    assert _deprecation_warnings(client, listed[0])
