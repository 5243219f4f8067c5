"""The bench tools' bad input: one ``error:`` line on stderr, exit status 2, nothing on stdout."""

import importlib
import sys
import zipfile

import pytest


def bad_inputs(tmp_path):
    """(module, argv) pairs, each naming input the tool must refuse before doing any work."""
    missing = str(tmp_path / "missing.pth")
    not_a_package = tmp_path / "bogus.txt"
    not_a_package.write_text("nothing")
    not_the_wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(not_the_wheel, "w") as z:
        z.writestr("x/y.py", "")
    return {
        "bucket_eval": ["--checkpoint", "no-label"],
        "user_vectors": ["--checkpoint", "K4=x.pth", "--checkpoint", "no-label"],
        "paired_users": ["--checkpoint", "MIND=a.pth", "--checkpoint", "MIND=b.pth"],
        "capsule_norms": ["--checkpoint", missing],
        "recency_eval": ["--checkpoint", missing],
        "routing_draw_eval": ["--checkpoint", missing],
        "diversity_curve": ["--checkpoint", missing, "--lambdas", "0", "--out", str(tmp_path / "curve")],
        "repeat_dataset": ["--package", str(not_a_package), "--out", str(tmp_path / "data")],
        "tafeng_dataset": ["--package", str(not_the_wheel), "--out", str(tmp_path / "data")],
    }


@pytest.mark.parametrize("tool", ["bucket_eval", "user_vectors", "paired_users", "capsule_norms", "recency_eval",
                                  "routing_draw_eval", "diversity_curve", "repeat_dataset", "tafeng_dataset"])
def test_bad_input_is_one_error_line_and_exit_2(tool, tmp_path, monkeypatch, capsys):
    argv = bad_inputs(tmp_path)[tool]
    main = importlib.import_module(f"bench.{tool}").main
    monkeypatch.setattr(sys, "argv", [tool, *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert out == ""
    assert not (tmp_path / "curve.json").exists() and not (tmp_path / "data").exists()
