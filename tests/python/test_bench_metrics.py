"""Serving metrics on synthetic timelines whose TTFT/ITL/TPOT/E2EL are known by construction."""

import numpy as np
import pytest

from kvserve.bench.metrics import RequestRecord, calculate_metrics, parse_goodput
from kvserve.bench.results import format_table, result_dict


def timeline(prompt_len, ttft, gaps, output_tokens=None):
    """A successful request whose chunks arrive at ttft, ttft+gaps[0], ..."""
    return RequestRecord(
        prompt_len=prompt_len, success=True, output_tokens=len(gaps) + 1 if output_tokens is None else output_tokens,
        ttft=ttft, itl=list(gaps), latency=ttft + sum(gaps),
    )


def failed(prompt_len):
    return RequestRecord(prompt_len=prompt_len, error="HTTP 500")


def test_known_timelines():
    records = [
        timeline(10, 0.1, [0.02, 0.02, 0.02]),  # 4 tokens, e2el 0.16, tpot 0.02
        timeline(20, 0.3, [0.05]),  # 2 tokens, e2el 0.35, tpot 0.05
        timeline(30, 0.2, [], output_tokens=1),  # 1 token: no TPOT, no ITL
    ]
    m = calculate_metrics(records, duration_s=2.0, percentiles=(50.0, 99.0))
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 0, 60, 7)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(3.5)
    assert m.total_token_throughput == pytest.approx(33.5)
    assert m.ttft.mean == pytest.approx(200.0)
    assert m.ttft.median == pytest.approx(200.0)
    assert m.ttft.std == pytest.approx(np.std([100.0, 300.0, 200.0]))
    assert m.tpot.mean == pytest.approx(35.0)  # (20 + 50) / 2: the 1-token request has no TPOT
    assert m.itl.mean == pytest.approx(27.5)  # pooled gaps 20, 20, 20, 50
    assert m.itl.median == pytest.approx(20.0)
    assert m.e2el.mean == pytest.approx((160.0 + 350.0 + 200.0) / 3)
    # numpy's linear interpolation: p99 of 100, 200, 300 is 200 + 0.98 * 100.
    assert m.ttft.percentiles == {50.0: pytest.approx(200.0), 99.0: pytest.approx(298.0)}
    assert m.request_goodput is None


def test_tpot_uses_reported_tokens_not_chunks():
    # A server may pack several tokens into one chunk: TPOT divides by output tokens - 1, ITL by chunk.
    record = timeline(5, 0.5, [0.4], output_tokens=9)
    m = calculate_metrics([record], duration_s=1.0)
    assert m.tpot.mean == pytest.approx(400.0 / 8)
    assert m.itl.mean == pytest.approx(400.0)


def test_failures_are_counted_and_excluded():
    good = timeline(10, 0.1, [0.01, 0.03])
    m = calculate_metrics([failed(1000), good, failed(1000)], duration_s=4.0, percentiles=(99.0,))
    assert (m.completed, m.failed, m.total_input, m.total_output) == (1, 2, 10, 3)
    assert m.request_throughput == pytest.approx(0.25)
    assert m.ttft.mean == pytest.approx(100.0) and m.ttft.percentiles[99.0] == pytest.approx(100.0)
    assert m.e2el.mean == pytest.approx(140.0)
    assert m.itl.mean == pytest.approx(20.0)


def test_all_failed_gives_zeros_like_vllm():
    m = calculate_metrics([failed(5), failed(5)], duration_s=1.0, goodput={"ttft": 1.0})
    assert (m.completed, m.failed, m.total_output) == (0, 2, 0)
    assert m.ttft.mean == m.tpot.median == m.itl.percentiles[99.0] == 0.0
    assert m.request_goodput == 0.0


def test_goodput_counts_requests_meeting_every_slo():
    records = [
        timeline(1, 0.1, [0.01] * 9),  # ttft 100 ms, tpot 10 ms: good
        timeline(1, 0.6, [0.01] * 9),  # ttft 600 ms: misses the TTFT SLO
        timeline(1, 0.1, [0.09] * 9),  # tpot 90 ms: misses the TPOT SLO
        timeline(1, 0.2, [], output_tokens=1),  # tpot counts as 0: good
        failed(1),
    ]
    slos = parse_goodput(["ttft:500", "tpot:50"])
    assert slos == {"ttft": pytest.approx(0.5), "tpot": pytest.approx(0.05)}
    m = calculate_metrics(records, duration_s=2.0, goodput=slos)
    assert m.request_goodput == pytest.approx(1.0)  # 2 good requests / 2 s
    e2el_only = calculate_metrics(records, duration_s=2.0, goodput=parse_goodput(["e2el:300"]))
    assert e2el_only.request_goodput == pytest.approx(1.0)  # e2el 190 and 200 ms


@pytest.mark.parametrize("bad", ["ttft", "latency:5", "tpot:-1", "tpot:fast"])
def test_bad_goodput_is_a_value_error(bad):
    with pytest.raises(ValueError, match=bad.split(":")[0]):
        parse_goodput([bad])


def test_duration_must_be_positive():
    with pytest.raises(ValueError, match="duration_s=0"):
        calculate_metrics([timeline(1, 0.1, [])], duration_s=0.0)


def test_table_and_json_report_the_same_metrics():
    records = [timeline(10, 0.1, [0.02, 0.02, 0.02]), failed(10)]
    m = calculate_metrics(records, duration_s=2.0, goodput={"e2el": 1.0}, percentiles=(90.0, 99.9))
    table = format_table(m, max_concurrency=8).splitlines()
    assert table[0] == "============ Serving Benchmark Result ============"
    assert "Successful requests:                     1" in table
    assert "Failed requests:                         1" in table
    assert "Maximum request concurrency:             8" in table
    assert "Request goodput (req/s):                 0.50" in table
    assert "---------------Time to First Token----------------" in table
    assert "Mean TPOT (ms):                          20.00" in table
    assert "P99.9 E2EL (ms):                         160.00" in table
    assert table[-1] == "=" * 50
    result = result_dict(m, records, {"model_id": "m"})
    assert result["model_id"] == "m" and result["completed"] == 1 and result["failed"] == 1
    assert result["mean_tpot_ms"] == pytest.approx(20.0) and result["p99.9_e2el_ms"] == pytest.approx(160.0)
    assert result["p90_ttft_ms"] == pytest.approx(100.0)
    assert result["output_lens"] == [4, 0] and result["errors"] == ["", "HTTP 500"]
    assert result["itls"][0] == pytest.approx([0.02] * 3)
