"""Recipe folders: a re-run never deletes, and the newest invocation is found (issue 16.7)."""

import json
import time

import pytest

from keras_bn import _run_folders, cli
from keras_bn._run_folders import MARKER, invocations, new_invocation_dir, newest_invocation, resolve_log_dir


def test_each_invocation_gets_a_fresh_folder_and_nothing_is_touched(tmp_path):
    recipe = tmp_path / "bn_vs_no_bn"
    first = new_invocation_dir(recipe, recipe="bn_vs_no_bn", argv=["--quick"])
    (first / "with_bn").mkdir()
    (first / "with_bn" / "my_notes.txt").write_text("mine")
    (recipe / "user_file.txt").write_text("also mine")
    second = new_invocation_dir(recipe, recipe="bn_vs_no_bn")
    third = new_invocation_dir(recipe, recipe="bn_vs_no_bn")
    assert len({first, second, third}) == 3 and all(p.parent == recipe for p in (first, second, third))
    assert (first / "with_bn" / "my_notes.txt").read_text() == "mine"
    assert (recipe / "user_file.txt").read_text() == "also mine"
    assert json.loads((first / MARKER).read_text())["argv"] == ["--quick"]
    assert invocations(recipe) == [first, second, third]
    assert newest_invocation(recipe) == third and newest_invocation(second) == second


def test_newest_is_by_start_time_not_by_name(tmp_path):
    first = new_invocation_dir(tmp_path, recipe="r")
    second = new_invocation_dir(tmp_path, recipe="r")
    marker = json.loads((first / MARKER).read_text())
    marker["started"] += 3600  # as if the clock had been set back before `second`
    (first / MARKER).write_text(json.dumps(marker))
    assert newest_invocation(tmp_path) == first


def test_plain_log_folder_is_used_as_given(tmp_path):
    (tmp_path / "run1" / "train").mkdir(parents=True)
    (tmp_path / "run1" / MARKER).write_text("not json")  # a damaged marker is not an invocation
    assert newest_invocation(tmp_path) is None
    assert resolve_log_dir(tmp_path) == (tmp_path, None)


def test_tensorboard_on_a_recipe_folder_serves_its_newest_run(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "bn_vs_no_bn"
    new_invocation_dir(recipe, recipe="bn_vs_no_bn")
    time.sleep(0.01)
    newest = new_invocation_dir(recipe, recipe="bn_vs_no_bn")
    served = []
    monkeypatch.setattr(cli, "_serve_tensorboard", lambda flags: served.append(flags) or 0)
    assert cli.main(["tensorboard", str(recipe), "--port", "6123"]) == 0
    assert served[0][:2] == ["--logdir", str(newest)]
    out = capsys.readouterr().out
    assert f"holds 2 run(s) of a recipe; showing the newest, {newest}" in out


@pytest.mark.parametrize("name", ["bn_vs_no_bn"])
def test_a_recipe_rerun_keeps_the_previous_run_and_the_users_files(tmp_path, name, monkeypatch, capsys):
    from keras_bn.recipes import _common

    def tiny_run(args):
        folder = _common.run_dir(args, name, "with_bn")
        folder.mkdir()
        (folder / "result.txt").write_text(str(args.seed))
        return {}

    first = _common.main(name, "test", lambda parser: None, tiny_run, ["--log-dir", str(tmp_path), "--seed", "1"])
    (tmp_path / name / "user.txt").write_text("mine")
    second = _common.main(name, "test", lambda parser: None, tiny_run, ["--log-dir", str(tmp_path), "--seed", "2"])
    assert first["log_dir"] != second["log_dir"]
    assert (tmp_path / name / "user.txt").read_text() == "mine"
    assert [(p / "with_bn" / "result.txt").read_text() for p in invocations(tmp_path / name)] == ["1", "2"]
    assert f"{name}: writing to {second['log_dir']}" in capsys.readouterr().out
