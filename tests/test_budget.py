import pytest

from elastic import OFAError
from specialize.budget import (Constraints, parse_latencies, parse_latency, parse_macs, parse_macs_list,
                               parse_params)


@pytest.mark.parametrize("text,ms", [
    ("40ms", 40.0), ("12.5ms", 12.5), ("800us", 0.8), ("800µs", 0.8), ("0.04s", 40.0), ("25", 25.0),
    (" 40 ms ", 40.0), ("40MS", 40.0), (".5ms", 0.5), ("1e2ms", 100.0), (30, 30.0),
])
def test_parse_latency_accepts_the_documented_forms(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["40mss", "fast", "", "ms", "-5ms", "0ms", "40 m s", "nanms", "infms", None, "4,0ms"])
def test_bad_latency_strings_name_the_accepted_forms(text):
    with pytest.raises(OFAError) as err:
        parse_latency(text)
    msg = str(err.value)
    assert "40ms" in msg and "800us" in msg and "\n" not in msg


def test_counts_and_lists():
    assert parse_macs("300M") == 3e8
    assert parse_macs("1.2G") == pytest.approx(1.2e9)
    assert parse_macs("450k") == 4.5e5
    assert parse_params("5M") == 5e6
    assert parse_macs("450000000") == 4.5e8
    assert parse_latencies("40ms, 15ms,25ms,25ms") == [15.0, 25.0, 40.0]
    assert parse_latencies(["15ms", "800us"]) == [0.8, 15.0]
    assert parse_macs_list("300M,200M") == [2e8, 3e8]
    for bad, fn in (("300X", parse_macs), ("5 apples", parse_params), ("15ms,,25ms", parse_latencies),
                    ("15ms,abc", parse_latencies), ("-1M", parse_params)):
        with pytest.raises(OFAError):
            fn(bad)
    with pytest.raises(OFAError, match="MAC count like 300M"):
        parse_macs("lots")


def test_constraints_combine_and_describe():
    c = Constraints.parse(latency="25ms", macs="300M", params="5M")
    assert (c.latency_ms, c.macs, c.params) == (25.0, 3e8, 5e6)
    assert c.describe() == "latency <= 25 ms, MACs <= 300M, params <= 5M"
    assert c.label() == "25ms_300M-macs_5M-params"
    assert Constraints().empty and not c.empty
    with pytest.raises(OFAError):
        Constraints(latency_ms=-1.0)
