"""The offline report's plots and near-duplicate clusters (issue 14), on a real preference dataset, and the
Prefect markdown's link to the page."""

from __future__ import annotations

import re

from test_contracts_support import clean_samples, msg, write_dataset

from align_core.shards.schema import Kind
from data_contracts.report import render_markdown
from data_contracts.runner import validate_dataset

NEAR_COPIES = {3: "How do I <b>reverse</b> a list?", 6: "how do i <B>REVERSE</B> a list", 20: "How do I <b>reverse</b> a list!!"}


def validated_with_near_copies(tmp_path):
    samples = clean_samples(Kind.PREFERENCE)
    for row, text in NEAR_COPIES.items():
        samples[row]["prompt"] = [msg("user", text)]
    return validate_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples))


def test_length_difference_histogram_counts_every_pair_in_signed_power_of_two_bins(tmp_path):
    result = validated_with_near_copies(tmp_path)

    histograms = {h["column"]: h for h in result.distributions["histograms"]}
    assert list(histograms) == ["prompt_chars", "chosen_chars", "rejected_chars", "length_difference_chars", "pair_similarity"]
    # "good answer 4: use sorted()." (28 characters) against "bad answer 4: you cannot." (25): +3 in the even rows;
    # against "bad answer 5: you cannot, lists stay as they are." (49): -21 in the odd ones
    difference = {b["label"]: b["count"] for b in histograms["length_difference_chars"]["bins"] if b["count"]}
    assert difference == {"-(16-31)": 20, "2-3": 20}
    assert histograms["length_difference_chars"]["bins"][0]["label"] == "-(16-31)"  # trimmed to the filled range
    assert [h["total"] for h in histograms.values()] == [40, 40, 40, 40, 40]
    assert len(histograms["pair_similarity"]["bins"]) == 20


def test_report_page_draws_each_histogram_inline_and_lists_the_clusters_escaped(tmp_path):
    result = validated_with_near_copies(tmp_path)
    page = result.report_path.read_text()

    assert page.count("<svg ") == 5 and "<img" not in page  # inline SVG, nothing to fetch
    assert not re.search(r"https?://|<link|<script", page)
    assert "chosen minus rejected, characters (40 rows)" in page
    assert "-(16-31): 20</title>" in page  # each bar's count on hover
    assert "<code>s-003, s-006, s-020</code>" in page
    assert "How do I &lt;b&gt;reverse&lt;/b&gt; a list?" in page and "<b>reverse" not in page


def test_markdown_artifact_links_to_the_report(tmp_path):
    result = validated_with_near_copies(tmp_path)

    markdown = render_markdown(result)

    assert f"report: [report.html](file://{result.report_path.absolute()})" in markdown
