"""The expert-token tables and the specialization-stability figure, on records
whose expert tokens and agreements are known."""

from __future__ import annotations

import pytest

from moebench.config import DataConfig
from moebench.errors import DataError
from moebench.reporting.render import figure_svg
from moebench.reporting.specialization import (
    TITLE, TOKENS_COLUMN, expert_sections, html_blocks, markdown_lines, stability_figures,
)
from moebench.results import load_results

TEXTS = ["a", " ", "\n", "b", "c", "d", "e"]
DATA = DataConfig(root=None, cache_dir=None)


def fake_vocabulary(task: str, data: DataConfig) -> list[str]:
    return TEXTS


def layer(first_expert_tokens: list[list[float]]) -> dict:
    """A layer of 2 experts, loads 30 and 10: expert 0 lists ``first_expert_tokens``, expert 1 token 'b'."""
    return {"load_E": [30.0, 10.0], "expert_tokens": [first_expert_tokens, [[3, 7, 4.0]]]}


def with_specialization(made: dict, agreements: list[float | None]) -> dict:
    curves = [{**point, "expert_agreement": a} for point, a in zip(made["curves"], agreements)]
    return {**made, "curves": curves}


@pytest.fixture
def learned(make_record, results_dir):
    """top1 on shakespeare_char at two seeds and three layers; top2 at one."""
    six = [[token, 10 - token, 3.0 - token / 10] for token in range(6)]
    first_tokens = {0: six, 1: [[4, 50, 9.0]]}  # seed 1's: not shown
    runs = [with_specialization(
        make_record("top1", "shakespeare_char", seed,
                    per_layer=[layer(first_tokens[seed]), layer([[2, 9, 1.5]]), layer([[1, 6, 2.0]])]),
        [None, 0.5 + seed / 10]) for seed in (0, 1)]
    top2 = make_record("top2", "shakespeare_char", 0, per_layer=[layer([[6, 5, 1.2]])])
    runs.append(with_specialization(top2, [None, 0.9]))
    return load_results(results_dir(*runs))


def test_a_row_per_expert_of_the_first_and_last_layer_of_each_routers_lowest_seed(learned):
    (task, table, notes), = expert_sections(learned, DATA, fake_vocabulary)
    assert task == "shakespeare_char"
    assert table[["router", "layer", "expert", "load"]].values.tolist() == [
        ["top1", "0", "0", "75.0%"], ["top1", "0", "1", "25.0%"],
        ["top1", "2", "0", "75.0%"], ["top1", "2", "1", "25.0%"],
        ["top2", "0", "0", "75.0%"], ["top2", "0", "1", "25.0%"]]
    # The first five of six tokens, decoded as string literals; seed 1's nowhere.
    assert table[TOKENS_COLUMN][0] == ("'a' ×3.00 (10), ' ' ×2.90 (9), '\\n' ×2.80 (8), 'b' ×2.70 (7), "
                                "'c' ×2.60 (6)")
    assert table[TOKENS_COLUMN][1] == "'b' ×4.00 (7)"
    assert table[TOKENS_COLUMN][2] == "' ' ×2.00 (6)"
    assert table[TOKENS_COLUMN][4] == "'e' ×1.20 (5)"
    assert "×9.00" not in "".join(table[TOKENS_COLUMN])


def test_tokens_show_as_ids_where_the_vocabulary_cannot_be_read(learned):
    def missing(task: str, data: DataConfig) -> list[str]:
        raise DataError("tinyshakespeare/input.txt is missing")

    (_, table, notes), = expert_sections(learned, DATA, missing)
    assert table[TOKENS_COLUMN][1] == "#3 ×4.00 (7)"
    assert any("tinyshakespeare/input.txt is missing" in note for note in notes)


def test_markdown_and_html_carry_the_decoded_tokens(learned):
    sections = expert_sections(learned, DATA, fake_vocabulary)
    text = "\n".join(markdown_lines(sections))
    assert text.startswith(f"## {TITLE}\n\n### shakespeare_char\n")
    assert "| top1 | 0 | 1 | 25.0% | 'b' ×4.00 (7) |" in text
    page = "\n".join(html_blocks(sections))
    assert "<h3>shakespeare_char</h3>" in page and "<td>'b' ×4.00 (7)</td>" in page


def test_old_records_and_the_synthetic_task_give_no_section_and_no_figure(make_record, results_dir):
    old = make_record("top1", "shakespeare_char")
    synthetic = make_record("top1", "synthetic", per_layer=[layer([[1, 6, 2.0]])])
    results = load_results(results_dir(old, synthetic))
    assert expert_sections(results, DATA, fake_vocabulary) == []
    assert stability_figures(results) == []
    assert markdown_lines([]) == [] and html_blocks([]) == []


def test_stability_figure_plots_the_agreement_of_each_router_and_is_deterministic(learned):
    (name, caption, fig), = stability_figures(learned)
    assert name == "shakespeare_char-expert_agreement" and "mean over seeds" in caption
    ax = fig.axes[0]
    lines = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
    assert lines == {"top1": [pytest.approx(0.55)], "top2": [0.9]}  # the first evaluation has none
    again, = stability_figures(learned)
    assert figure_svg(fig) == figure_svg(again[2])
