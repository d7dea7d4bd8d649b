"""The benchmark results file: every figure with its samples and baseline, and the machine's
fingerprint, read back as written."""

import json
import platform

from harness.measure import Comparison, summarize
from harness.results import Results, fingerprint


def test_fingerprint_names_the_machine():
    machine = fingerprint()
    assert machine["kernel"] == platform.release()
    assert machine["cores"] >= 1 and machine["cpu_model"] not in ("", "unknown")
    assert machine["virtualization"] == "bare metal" or machine["virtualization"].startswith(
        "guest"
    )


def test_a_recorded_figure_is_written_with_its_samples_and_baseline(tmp_path, capsys):
    subject = summarize([10.0, 11.0, 12.0, 11.0, 10.0, 11.0, 12.0, 50.0], "Mpps")
    baseline = summarize([20.0, 22.0, 21.0], "Mpps")
    run = Results(testbed="veth", tree=tmp_path)
    run.record(Comparison("demo", subject, baseline, "bare"), flows=40)
    assert capsys.readouterr().out.startswith('RESULT {"name": "demo"')
    path = tmp_path / "out" / "results.json"
    run.write(path)
    written = json.loads(path.read_text())
    assert written["testbed"] == "veth" and written["git_revision"] is None, "tmp is no checkout"
    assert written["fingerprint"] == fingerprint()
    (figure,) = written["figures"]
    assert figure["subject"]["values"][-1] == 50.0, "every sample is kept, outliers too"
    assert figure["subject"]["outliers"] == 1 and figure["subject"]["median"] == 11.0
    assert figure["baseline"]["median"] == 21.0 and figure["baseline_name"] == "bare"
    assert figure["ratio"] == 11.0 / 21.0 and figure["extra"] == {"flows": 40}
