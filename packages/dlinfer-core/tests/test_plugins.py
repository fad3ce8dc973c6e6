"""Discovery, validation and selection with real third-party plugin distributions.

The plugins (tests/plugin_fixtures) are pip-installed into a temporary directory; every check runs in
one subprocess that has that directory on PYTHONPATH, so this process's registry is untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
from plugin_fixtures import (
    BROKEN_AT_DISCOVERY,
    BROKEN_OP_TABLE,
    BROKEN_WHEN_SELECTED,
    PLUGINS,
    dist_name,
    plugin_env,
    register_scenarios,
)

from dlinfer.spec import API_VERSION

ACTIVATE = "result = dlinfer.activate().name"

SCENARIOS: dict[str, dict[str, Any]] = {
    "discover": {"code": "result = records()"},
    "auto": {"code": ACTIVATE},
    "unknown-name": {"env": {"DLINFER_BACKEND": "nosuch"}, "code": ACTIVATE},
    "two-on-cpu": {"env": {"DLINFER_TEST_ENABLE": "twincpu"}, "code": ACTIVATE},
    "two-on-cpu-blocked": {"env": {"DLINFER_TEST_ENABLE": "twincpu", "DLINFER_DISABLE_PLUGINS": "twincpu"},
                           "code": "result = [dlinfer.activate().name, sorted(records()['backends'])]"},
    "two-on-cpu-explicit": {"env": {"DLINFER_TEST_ENABLE": "twincpu", "DLINFER_BACKEND": "twincpu"},
                            "code": ACTIVATE},
    "disable-good": {"env": {"DLINFER_DISABLE_PLUGINS": "goodcpu, importerr"},
                     "code": "result = [dlinfer.activate().name, records()]"},
    "impostor": {"path": ["@DUP"], "code": "result = [dlinfer.activate().name, records()]"},
}
for _name in BROKEN_AT_DISCOVERY + BROKEN_OP_TABLE:
    SCENARIOS[f"explicit-{_name}"] = {"env": {"DLINFER_BACKEND": _name}, "code": ACTIVATE}

USE_OPS = """
x, w = torch.randn(3, 16), torch.randn(16)
y = ops.rms_norm(x, w)                                 # the first call selects and activates
lin = ops.linear(torch.randn(2, 8), torch.randn(4, 8))
from dlinfer.reference.norm import rms_norm as ref_rms_norm
result = {"selected": dispatch.current().name, "rms_norm_ok": torch.allclose(y, ref_rms_norm(x, w, eps=1e-6)),
          "linear_shape": list(lin.shape), "records": records()}
"""
for _name in BROKEN_WHEN_SELECTED:
    SCENARIOS[f"auto-skips-{_name}"] = {"env": {"DLINFER_TEST_ENABLE": _name}, "code": USE_OPS}
SCENARIOS["auto-skips-all-broken"] = {"env": {"DLINFER_TEST_ENABLE": ",".join(BROKEN_WHEN_SELECTED)},
                                      "code": USE_OPS}
SCENARIOS["explicit-opsraise"] = {"env": {"DLINFER_TEST_ENABLE": "opsraise", "DLINFER_BACKEND": "opsraise"},
                                  "code": ACTIVATE}
SCENARIOS["probe-raises"] = {
    "env": {"DLINFER_TEST_ENABLE": "proberaises"},
    "code": USE_OPS + "result['probe_error'] = REGISTRY.records['proberaises'].probe_error",
}
SCENARIOS["disable-reference"] = {"env": {"DLINFER_DISABLE_PLUGINS": "reference"}, "code": USE_OPS}
SCENARIOS["disable-reference-and-good"] = {"env": {"DLINFER_DISABLE_PLUGINS": "reference,goodcpu"},
                                           "code": USE_OPS}
SCENARIOS["disable-reference-explicit"] = {
    "env": {"DLINFER_DISABLE_PLUGINS": "reference,goodcpu", "DLINFER_BACKEND": "reference"}, "code": USE_OPS}


register_scenarios("plugins", SCENARIOS)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return plugin_env(tmp_path_factory).outcomes("plugins")


def _ok(outcome: dict[str, dict[str, Any]], name: str) -> Any:
    res = outcome[name]
    assert res["error"] is None, f"{name}: {res['error_type']}: {res['error']}"
    return res["result"]


def _error(outcome: dict[str, dict[str, Any]], name: str, error_type: str) -> str:
    res = outcome[name]
    assert res["error_type"] == error_type, f"{name}: expected {error_type}, got {res}"
    return res["error"]


def test_good_plugin_is_discovered_with_its_distribution(outcome):
    backends = _ok(outcome, "discover")["backends"]
    assert backends["goodcpu"] == {"plugin": "goodcpu", "dist": "dlinfer-test-goodcpu", "version": "1.2.3",
                                   "device": "cpu"}
    assert backends["reference"]["dist"] == "dlinfer-core"


def test_good_plugin_is_auto_selected_over_reference_despite_broken_plugins(outcome):
    assert _ok(outcome, "auto") == "goodcpu"


EXPECTED_LOAD_ERRORS = {
    "importerr": ["import of 'dlinfer_test_importerr' failed", "ImportError",
                  "libfakevendor.so: cannot open shared object file"],
    "badapi": ["supports dlinfer API >=2.0,<3", f"implements API {API_VERSION}",
               "install a dlinfer-core whose API version satisfies >=2.0,<3",
               f"or a version of dlinfer-test-badapi written for API {API_VERSION}"],
    "notbackend": ["dlinfer_backend() returned dict, expected dlinfer.plugin.Backend"],
    "hookraises": ["dlinfer_backend() raised RuntimeError: vendor SDK too old: need SDK 8"],
    "dupref": ["backend name 'reference' is already registered by dlinfer-core"],
}


@pytest.mark.parametrize("plugin", BROKEN_AT_DISCOVERY)
def test_broken_plugin_is_recorded_with_distribution_version_and_cause(outcome, plugin):
    errors = {e["plugin"]: e for e in _ok(outcome, "discover")["errors"]}
    rec = errors[plugin]
    assert (rec["dist"], rec["version"]) == (dist_name(plugin), PLUGINS[plugin][0])
    for fragment in EXPECTED_LOAD_ERRORS[plugin]:
        assert fragment in rec["error"]
    assert plugin not in _ok(outcome, "discover")["backends"]


@pytest.mark.parametrize("plugin", BROKEN_AT_DISCOVERY)
def test_explicitly_requested_broken_plugin_raises_with_cause(outcome, plugin):
    msg = _error(outcome, f"explicit-{plugin}", "PluginError")
    assert f"plugin '{plugin}' ({dist_name(plugin)} {PLUGINS[plugin][0]})" in msg
    for fragment in EXPECTED_LOAD_ERRORS[plugin]:
        assert fragment in msg


def test_unknown_op_name_is_rejected_naming_distribution(outcome):
    msg = _error(outcome, "explicit-badopname", "PluginError")
    assert "plugin 'badopname' (dlinfer-test-badopname 0.1.2)" in msg
    assert "invalid op table: unknown op 'rms_norm_fast'" in msg


def test_signature_mismatch_is_rejected_naming_parameters(outcome):
    msg = _error(outcome, "explicit-badsig", "PluginError")
    assert "plugin 'badsig' (dlinfer-test-badsig 0.1.3)" in msg
    assert "op 'rms_norm' has parameters (x, w, eps), spec expects (x, weight, *eps)" in msg


def test_unknown_backend_name(outcome):
    msg = _error(outcome, "unknown-name", "BackendSelectionError")
    assert "no dlinfer backend named 'nosuch'" in msg and "goodcpu" in msg and "reference" in msg


def test_two_backends_on_one_device_is_an_error_naming_both(outcome):
    msg = _error(outcome, "two-on-cpu", "BackendSelectionError")
    assert "claim device 'cpu'" in msg
    assert "goodcpu (dlinfer-test-goodcpu 1.2.3)" in msg and "twincpu (dlinfer-test-twincpu 0.3.0)" in msg
    assert "DLINFER_BACKEND" in msg and "DLINFER_DISABLE_PLUGINS" in msg


def test_conflict_resolved_by_blocking_or_explicit_choice(outcome):
    selected, names = _ok(outcome, "two-on-cpu-blocked")
    assert selected == "goodcpu" and "twincpu" not in names
    assert _ok(outcome, "two-on-cpu-explicit") == "twincpu"


def test_disable_plugins_blocks_by_name(outcome):
    selected, recs = _ok(outcome, "disable-good")
    assert selected == "reference"
    assert "goodcpu" not in recs["backends"]
    assert "importerr" not in {e["plugin"] for e in recs["errors"]}  # never imported
    assert "badapi" in {e["plugin"] for e in recs["errors"]}  # the others are unaffected


def test_duplicate_backend_name_from_another_distribution(outcome):
    selected, recs = _ok(outcome, "impostor")
    assert selected == "goodcpu"
    assert recs["backends"]["goodcpu"]["dist"] == "dlinfer-test-goodcpu"  # first on sys.path wins
    (err,) = [e for e in recs["errors"] if e["plugin"] == "impostor"]
    assert (err["dist"], err["version"]) == ("dlinfer-test-impostor", "0.9.0")
    assert err["error"] == "backend name 'goodcpu' is already registered by dlinfer-test-goodcpu 1.2.3"


SKIP_CAUSES = {
    "opsraise": "load_ops() failed: OSError: libvendorops.so: undefined symbol: aclnnRmsNorm",
    "activateraises": "activate() failed: RuntimeError: device 0 is busy",
    "badopname": "invalid op table: unknown op 'rms_norm_fast'",
    "badsig": "invalid op table: op 'rms_norm' has parameters (x, w, eps), spec expects (x, weight, *eps)",
}


@pytest.mark.parametrize("plugin", BROKEN_WHEN_SELECTED)
def test_auto_selected_plugin_that_fails_is_reported_and_skipped(outcome, plugin):
    """An available plugin whose op table or activation fails is skipped, named with version and cause."""
    r = _ok(outcome, f"auto-skips-{plugin}")
    assert r["selected"] == "goodcpu" and r["rms_norm_ok"] and r["linear_shape"] == [2, 4]
    head = f"RuntimeWarning: dlinfer backend plugin '{plugin}' ({dist_name(plugin)} {PLUGINS[plugin][0]}) skipped: "
    assert any(w.startswith(head + SKIP_CAUSES[plugin]) for w in outcome[f"auto-skips-{plugin}"]["warnings"])
    errors = {e["plugin"]: e["error"] for e in r["records"]["errors"]}
    assert errors[plugin].startswith(SKIP_CAUSES[plugin])


def test_every_broken_accelerator_skipped_the_working_one_still_serves(outcome):
    r = _ok(outcome, "auto-skips-all-broken")
    assert r["selected"] == "goodcpu" and r["rms_norm_ok"]
    skipped = [w for w in outcome["auto-skips-all-broken"]["warnings"] if " skipped: " in w]
    assert len(skipped) == len(BROKEN_WHEN_SELECTED), skipped


def test_explicitly_requested_plugin_whose_ops_fail_still_raises(outcome):
    msg = _error(outcome, "explicit-opsraise", "PluginError")
    assert "plugin 'opsraise' (dlinfer-test-opsraise 0.2.1)" in msg and SKIP_CAUSES["opsraise"] in msg


def test_availability_probe_that_raises_shows_its_cause(outcome):
    r = _ok(outcome, "probe-raises")
    cause = "is_available() raised RuntimeError: driver 23.0 is older than the runtime's 24.1"
    assert r["selected"] == "goodcpu" and r["probe_error"] == cause
    assert (f"RuntimeWarning: dlinfer backend plugin 'proberaises' (dlinfer-test-proberaises 0.2.3): {cause}; "
            "treated as not available") in outcome["probe-raises"]["warnings"]


def test_disabling_the_reference_keeps_its_ops_as_the_fallback(outcome):
    r = _ok(outcome, "disable-reference")
    assert r["selected"] == "goodcpu" and r["rms_norm_ok"] and r["linear_shape"] == [2, 4]


def test_disabling_the_reference_with_nothing_else_available_is_a_clear_error(outcome):
    msg = _error(outcome, "disable-reference-and-good", "BackendSelectionError")
    assert "no dlinfer backend is available and DLINFER_DISABLE_PLUGINS blocks the reference backend" in msg
    assert "DLINFER_BACKEND=reference" in msg
    r = _ok(outcome, "disable-reference-explicit")
    assert r["selected"] == "reference" and r["rms_norm_ok"]
