"""doctor_demo --quick: the broken run gets its diagnosis live, the fix it names trains."""

from pathlib import Path

from keras_bn.recipes import doctor_demo
from tests._recipe_doctor import check_declared_runs


def test_quick_demo_names_the_cause_and_the_fix_trains(tmp_path, capsys):
    results = doctor_demo.main(["--quick", "--dataset", "fashion_mnist_small", "--log-dir", str(tmp_path)])
    out = capsys.readouterr().out
    check_declared_runs(doctor_demo, results)
    broken, fixed = results["runs"]["tiny_init"], results["runs"]["glorot_init"]
    fault_rules = {f.rule for f in broken["findings"]} & set(doctor_demo.FAULTS["tiny_init"])
    assert fault_rules  # the fault run gets the finding it demonstrates ...
    assert "the doctor's diagnosis:" in out and "Glorot" in out
    live = [line for line in out.splitlines() if line.startswith("step ") and "activation std at block8_tanh" in line]
    assert len(live) == 1  # ... printed live, once
    for name in doctor_demo.HEALTHY:  # the healthy run gets nothing at warning or above
        assert not [f for f in results["runs"][name]["findings"] if f.severity in ("error", "warning")]
    assert broken["loss"][-1] > 0.95 * broken["loss"][0]  # the broken net does not train
    assert fixed["loss"][-1] < 0.6 * broken["loss"][-1] and fixed["val_accuracy"][-1] > 0.5  # the fix trains
    assert (Path(results["log_dir"]) / "tiny_init" / "report.md").read_text().count("collapsing_activations") == 1
