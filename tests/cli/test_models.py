"""`aipower models`: the catalog as a table."""

from __future__ import annotations

from pathlib import Path

from aipower import catalog as catalog_file
from aipower.money import format_usd
from tests.cli.conftest import Invoke

# A few rows written out by hand, so the test does not only restate the code's own formatting.
KNOWN_PRICES = {
    "deepseek/deepseek-chat": ("0.34", "0.50"),
    "openai/gpt-5": ("3.00", "18.00"),
    "zhipu/glm-4-flash": ("0.01", "0.01"),
    "minimax/minimax-text-01": ("0.36", "1.44"),
}


def rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines()[1:]}


def test_models_lists_all_16_with_prices(invoke: Invoke) -> None:
    result = invoke(["models"])
    assert result.exit_code == 0, result.output
    catalog = catalog_file.load()
    assert len(catalog.models) == 16
    table = rows(result.stdout)
    for model in catalog.models.values():
        assert model.id in table, f"{model.id} missing from `aipower models`"
        assert model.name in result.stdout
        prices = f" {format_usd(model.price.input)} {format_usd(model.price.output)} "
        assert prices in " ".join(table[model.id]) + " ", model.id
    for model_id, (price_in, price_out) in KNOWN_PRICES.items():
        line = " ".join(table[model_id])
        assert f" {price_in} {price_out} " in line, line
    for route in catalog.routes:
        assert route in table


def test_models_marks_configured_providers(invoke: Invoke) -> None:
    table = rows(invoke(["models"], env={"DEEPSEEK_API_KEY": "sk-test"}).stdout)
    assert table["deepseek/deepseek-chat"][-1] == "yes"
    assert table["qwen/qwen-turbo"][-1] == "-"


def test_models_merges_an_operator_catalog(invoke: Invoke, tmp_path: Path) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text('[models."deepseek/deepseek-chat"]\nprice = { input = "0.30", output = "0.45" }\n')
    result = invoke(["models", "--catalog", str(extra)])
    assert result.exit_code == 0, result.output
    assert " 0.30 0.45 " in " ".join(rows(result.stdout)["deepseek/deepseek-chat"])
