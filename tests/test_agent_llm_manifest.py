"""cluster/llm.yaml: a Ray Serve LLM application serving the agent's OpenAI-compatible endpoint.

Its shape is checked against Ray Serve's deploy schema everywhere, and against ``ray.serve.llm``'s own
config classes (``LLMServingArgs`` / ``LLMConfig``, what ``build_openai_app`` parses) where that module
imports, which needs vLLM or SGLang (``ray[llm]``): skipped otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fmtrade.config import AgentSettings

MANIFEST = Path(__file__).resolve().parents[1] / "cluster" / "llm.yaml"


def app() -> dict[str, Any]:
    config = yaml.safe_load(MANIFEST.read_text())
    ServeDeploySchema.model_validate(config)
    (only,) = config["applications"]
    return only


def test_manifest_is_a_serve_llm_openai_app_serving_the_agents_model() -> None:
    application = app()
    assert application["import_path"] == "ray.serve.llm:build_openai_app"
    assert application["route_prefix"] == "/"  # the agent calls <base>/v1/chat/completions
    (llm,) = application["args"]["llm_configs"]
    # The model id the endpoint answers to is the agent's default llm_model: no extra setting to align.
    assert llm["model_loading_config"]["model_id"] == AgentSettings().llm_model
    assert "Instruct" in llm["model_loading_config"]["model_source"]
    assert llm["accelerator_type"]  # a GPU node
    assert AgentSettings().llm_base_url.endswith(":8000/v1")
    assert yaml.safe_load(MANIFEST.read_text())["http_options"]["port"] == 8000


def test_llm_configs_validate_against_ray_serve_llm() -> None:
    llm = pytest.importorskip(
        "ray.serve.llm", exc_type=ImportError, reason="ray.serve.llm needs vLLM or SGLang (pip install 'ray[llm]')"
    )
    args = llm.LLMServingArgs.model_validate(app()["args"])
    (config,) = args.llm_configs
    assert isinstance(config, llm.LLMConfig)
    assert config.model_id == AgentSettings().llm_model
    assert config.deployment_config["autoscaling_config"]["min_replicas"] >= 1
