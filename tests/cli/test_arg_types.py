"""Flags with values no command can use: argparse's usage error naming the flag (exit 2), not a traceback."""

from __future__ import annotations

import argparse

import pytest

from mlops_assets.cli.arg_types import iso_day, non_negative_float, one_or_more_of, port_number, positive_float, positive_int
from mlops_assets.cli.main import main


@pytest.mark.parametrize(
    "argv,flag,says",
    [
        (["serve", "start", "--port", "99999"], "--port", "99999 is not a port number (1-65535)"),
        (["serve", "config", "--port", "http"], "--port", "'http' is not a port number"),
        (["demo", "--serve-port", "0"], "--serve-port", "0 is not a port number"),
        (["demo", "--interval", "-3"], "--interval", "-3 is not a number of seconds (0-86400)"),
        (["demo", "--days", "0"], "--days", "0 is not a whole number (at least 1)"),
        (["land", "flights", "--days", "0"], "--days", "0 is not a whole number (at least 1)"),
        (["land", "flights", "--start", "2013-02-30"], "--start", "'2013-02-30' is not a day as YYYY-MM-DD"),
        (["land", "flights", "--start", "yesterday"], "--start", "'yesterday' is not a day as YYYY-MM-DD"),
        (["bench", "serving", "--duration", "0"], "--duration", "0 is not a number (above 0)"),
        (["bench", "leadtime", "--port", "-1"], "--port", "-1 is not a port number"),
        (["bench", "drift", "--rows", "many"], "--rows", "'many' is not a whole number"),
        (["bench", "drift", "--numerical", "0"], "--numerical", "0 is not a whole number (at least 1)"),
        (["bench", "serving", "--sides", "ourz,floor"], "--sides", "ourz: choose from ours, floor, mlflow, naive"),
        (["bench", "serving", "--protocols", "v3"], "--protocols", "v3: choose from v1, v2"),
        (["serve", "start", "--num-cpus", "0"], "--num-cpus", "0 is not a whole number (at least 1)"),
        (["serve", "traffic", "flights", "--canary", "1.5"], "--canary", "1.5 is not a share of requests (0-1)"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(argv, flag, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"argument {flag}: {says}" in err and "Traceback" not in err


def test_good_values_pass_through():
    assert port_number("8000") == 8000 and port_number("65535") == 65535
    assert iso_day("2013-01-01") == "2013-01-01"
    assert positive_int("3") == 3 and non_negative_float("0") == 0.0 and positive_float("0.5") == 0.5
    assert one_or_more_of("ours", "floor")("floor, ours") == ("floor", "ours")
    for parse, text in [(non_negative_float, "nan"), (positive_float, "0"), (positive_int, "1.5"), (iso_day, "2013-1-1x")]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
