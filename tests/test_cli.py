import urllib.request

import pytest

from keras_bn import cli


def test_list_shows_every_recipe_with_a_description(capsys):
    from keras_bn.recipes import RECIPES

    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)


def test_unknown_recipe_lists_the_known_ones(capsys):
    assert cli.main(["run", "bn_vs_nobn"]) == 2
    err = capsys.readouterr().err
    assert "`recipe` must be one of: 'bn_vs_no_bn', 'init_study', 'bn_paper_mnist'" in err and "Did you mean 'bn_vs_no_bn'" in err


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "list" in out and "run" in out and "tensorboard" in out


def test_tensorboard_server_serves_on_loopback_and_stops(tmp_path):
    with cli.tensorboard_server(str(tmp_path)) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "data/runs", timeout=30) as response:
            assert response.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "data/runs", timeout=2)
